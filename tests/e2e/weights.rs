//! Weights: the download path against a local HTTP server (good and corrupted files), and a
//! render that picks the downloaded file up by itself.

use crate::helpers::{gramzoom, stderr, tempdir};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::TcpListener;

/// Serves each (path, body) pair once per request, on a loopback port, for `requests` requests.
fn serve(files: Vec<(String, Vec<u8>)>, requests: usize) -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let mut stream = stream.unwrap();
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap();
            let request = String::from_utf8_lossy(&buf[..n]);

            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            match files.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => {
                    let head =
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                    stream.write_all(head.as_bytes()).unwrap();
                    stream.write_all(body).unwrap();
                }
                None => stream
                    .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .unwrap(),
            }
        }
    });
    (base, handle)
}

/// A complete VGG16 conv state dict of random values, as safetensors.
fn vgg16_safetensors() -> Vec<u8> {
    use safetensors::tensor::{Dtype, TensorView};
    let layers = engine::vgg::Network::Vgg16.layers();
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = layers
        .iter()
        .flat_map(|l| {
            let w: Vec<u8> =
                (0..l.cout * l.cin * 9).flat_map(|i| (((i % 7) as f32 - 3.0) * 0.01).to_le_bytes()).collect();
            let b: Vec<u8> = (0..l.cout).flat_map(|_| 0.01f32.to_le_bytes()).collect();
            [(l.weight_key(), vec![l.cout, l.cin, 3, 3], w), (l.bias_key(), vec![l.cout], b)]
        })
        .collect();
    let views = data.iter().map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap()));
    safetensors::tensor::serialize(views, &None).unwrap()
}

fn hex8(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().take(4).map(|b| format!("{b:02x}")).collect()
}

#[test]
fn download_verifies_the_hash_and_render_uses_the_cached_file() {
    let dir = tempdir();
    let body = vgg16_safetensors();
    let good = format!("/vgg16-{}.safetensors", hex8(&body));
    // Corrupted in transit: the name promises one hash, the bytes have another.
    let mut corrupt_body = body.clone();
    corrupt_body[1000] ^= 1;
    let corrupt = format!("/mirror/vgg16-{}.safetensors", hex8(&body));
    // Two requests reach the server: the corrupt file and the good one. A URL without a hash is
    // refused before anything is fetched.
    let (base, server) = serve(vec![(good.clone(), body.clone()), (corrupt.clone(), corrupt_body)], 2);
    let cache = dir.path().join("cache");
    let weights_dir = cache.join("weights");

    let bad = gramzoom(&["weights", "download", "vgg16", "--url", &format!("{base}{corrupt}")], &cache);

    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("the download is corrupt and was discarded"), "{}", stderr(&bad));
    let no_hash = gramzoom(&["weights", "download", "vgg16", "--url", &format!("{base}/vgg16.pth")], &cache);
    assert!(stderr(&no_hash).contains("carries no hash"), "{}", stderr(&no_hash));
    let left: Vec<_> =
        std::fs::read_dir(&weights_dir).map(|d| d.map(|e| e.unwrap().file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "a rejected download left {left:?}");

    let ok = gramzoom(&["weights", "download", "vgg16", "--url", &format!("{base}{good}")], &cache);
    assert!(ok.status.success(), "{}", stderr(&ok));

    let saved = weights_dir.join(good.trim_start_matches('/'));
    assert_eq!(std::fs::read(&saved).unwrap(), body);
    server.join().unwrap();

    // render finds the downloaded file by itself, and does not announce random features.
    let out = dir.path().join("still.png");
    let mut args = vec!["render", "-o", out.to_str().unwrap(), "--frames", "1"];
    args.extend(crate::helpers::SMALL);
    let r = gramzoom(&args, &cache);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(!stderr(&r).contains("random features"), "{}", stderr(&r));
    // With an empty cache, the render says once that it uses random features.
    let empty = dir.path().join("empty-cache");
    let r = gramzoom(
        &["render", "-o", out.to_str().unwrap(), "--frames", "1", "--size", "32x32", "--warmup", "1", "--iters", "1"],
        &empty,
    );
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(stderr(&r).matches("random features").count(), 1, "{}", stderr(&r));
}
