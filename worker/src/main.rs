fn main() {
    worker::hello();
}
