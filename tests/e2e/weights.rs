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

/// A loopback server for first-use fetches: `/good` serves `body`, `/cut` promises all of it
/// and closes half-way; every request is counted.
fn serve_counted(body: Vec<u8>) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            seen.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap_or(0);
            let path = String::from_utf8_lossy(&buf[..n]).split_whitespace().nth(1).unwrap_or("").to_string();
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes());
            let _ = match path.as_str() {
                "/good/vgg16.safetensors" => stream.write_all(&body),
                _ => stream.write_all(&body[..body.len() / 2]),
            };
        }
    });
    (base, count)
}

/// What a user without weights meets on first use: the render fetches the pretrained file with
/// its whole SHA-256 checked and uses it; a second render uses the cached file; a corrupt
/// file, a cut connection and an unreachable host each leave nothing behind, say what happened
/// and render with the built-in network; offline fetches nothing; a mirror without its hash is
/// refused. The server is local: the tests never touch the internet.
#[test]
fn the_first_render_fetches_pretrained_weights_and_failures_leave_nothing() {
    use std::sync::atomic::Ordering;
    let body = vgg16_safetensors();
    let sha: String = Sha256::digest(&body).iter().map(|b| format!("{b:02x}")).collect();
    let wrong: String = sha.chars().rev().collect();
    let (base, requests) = serve_counted(body.clone());
    let dir = tempdir();
    let out = dir.path().join("still.png");
    let render = |cache: &std::path::Path, url: &str, sha: Option<&str>, offline: bool| {
        let mut args = vec!["render", "-o", out.to_str().unwrap(), "--frames", "1"];
        args.extend(crate::helpers::SMALL);
        let mut cmd = crate::helpers::command(cache);
        cmd.args(&args).env("GRAMZOOM_VGG16_URL", url).env("RUST_LOG", "info");
        if !offline {
            cmd.env_remove("GRAMZOOM_OFFLINE");
        }
        match sha {
            Some(s) => cmd.env("GRAMZOOM_VGG16_SHA256", s),
            None => cmd.env_remove("GRAMZOOM_VGG16_SHA256"),
        };
        let started = std::time::Instant::now();
        let r = cmd.output().unwrap();
        (r, started.elapsed())
    };
    let left = |cache: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(cache.join("weights"))
            .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    };

    // Failures: (case, url, sha, what stderr must say). Each still renders, with random features.
    let unreachable = "http://10.255.255.1:9/vgg16.safetensors".to_string();
    let cases = [
        (
            "corrupt",
            format!("{base}/good/vgg16.safetensors"),
            wrong.clone(),
            "the download is corrupt and was discarded",
        ),
        ("cut", format!("{base}/cut/vgg16.safetensors"), sha.clone(), "connection closed after"),
        ("unreachable", unreachable, sha.clone(), "could not fetch pretrained vgg16 weights"),
    ];
    for (case, url, hash, says) in &cases {
        let cache = dir.path().join(case);
        let (r, took) = render(&cache, url, Some(hash), false);
        let err = stderr(&r);
        assert!(r.status.success(), "{case}: {err}");
        assert!(err.contains(says) && err.contains("random features"), "{case}: {err}");
        assert!(left(&cache).is_empty(), "{case}: left {:?}", left(&cache));
        assert!(took.as_secs() < 30, "{case}: took {took:?}; an unreachable host must fail fast");
    }
    let before = requests.load(Ordering::SeqCst);
    assert_eq!(before, 2, "the corrupt and the cut file were each requested once");

    // Offline: nothing is requested.
    let cache = dir.path().join("offline");
    let (r, _) = render(&cache, &format!("{base}/good/vgg16.safetensors"), Some(&sha), true);
    assert!(r.status.success() && stderr(&r).contains("random features"), "{}", stderr(&r));
    assert_eq!(requests.load(Ordering::SeqCst), before, "an offline render fetched");

    // A mirror without its hash is refused before any request.
    let (r, _) = render(&cache, &format!("{base}/good/vgg16.safetensors"), None, false);
    assert!(!r.status.success() && stderr(&r).contains("GRAMZOOM_VGG16_SHA256"), "{}", stderr(&r));
    assert_eq!(requests.load(Ordering::SeqCst), before);

    // The good file: fetched once, verified, kept under a name `cached` finds, used.
    let cache = dir.path().join("good");
    let (r, _) = render(&cache, &format!("{base}/good/vgg16.safetensors"), Some(&sha), false);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(!stderr(&r).contains("random features"), "{}", stderr(&r));
    assert_eq!(left(&cache), [format!("vgg16-{}.safetensors", &sha[..8])]);
    assert_eq!(std::fs::read(cache.join("weights").join(&left(&cache)[0])).unwrap(), body);
    let (r, _) = render(&cache, &format!("{base}/good/vgg16.safetensors"), Some(&sha), false);
    assert!(r.status.success() && !stderr(&r).contains("random features"), "{}", stderr(&r));
    assert_eq!(requests.load(Ordering::SeqCst), before + 1, "the second render used the cached file");
}
