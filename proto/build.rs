//! Generates the gramzoom.v1 messages and services, plus the file descriptor set that server
//! reflection serves. protoc comes from the protoc-bin-vendored crate unless PROTOC is set.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=PROTOC");
    println!("cargo:rerun-if-changed=gramzoom/v1/gramzoom.proto");
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("gramzoom_v1_descriptor.bin"))
        .compile_protos(&["gramzoom/v1/gramzoom.proto"], &["."])?;
    Ok(())
}
