//! The download command against a server on loopback (127.0.0.1) that serves an archive the
//! test builds: checksum verified, unpacked into place, nothing kept on a mismatch. The server
//! answers a bounded number of requests and stops by itself.

#[path = "common/scratch.rs"]
mod scratch;

use host::data::download::{download, Source};
use md5::{Digest, Md5};
use scratch::Scratch;
use std::io::{Read, Write};
use std::net::TcpListener;

/// A tar.gz holding `folder/test_batch.bin` with `payload`.
fn archive(folder: &str, payload: &[u8]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(payload.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, format!("{folder}/test_batch.bin"), payload)
        .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

/// Serves `body` to the next `requests` connections on 127.0.0.1; returns the URL.
fn serve(body: Vec<u8>, requests: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let mut stream = stream.unwrap();
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let mut req = [0u8; 4096];
            let _ = stream.read(&mut req);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/gzip\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    format!("http://{addr}/cifar-10-binary.tar.gz")
}

fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn download_should_verify_the_checksum_and_unpack_into_place() {
    let dir = Scratch::new("download", "unpack");
    let payload = b"0123456789".repeat(300);
    let body = archive("cifar-10-batches-bin", &payload);
    let md5 = md5_hex(&body);

    // A wrong checksum: an error naming the address, and nothing left behind.
    let url = serve(body.clone(), 1);
    let bad = Source {
        name: "cifar10",
        url: &url,
        md5: "00000000000000000000000000000000",
        folder: "cifar-10-batches-bin",
    };
    let e = download(&bad, &dir, false).unwrap_err().to_string();
    assert!(e.contains("checksum mismatch") && e.contains(&url), "{e}");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "a failed download keeps nothing"
    );

    // The right one: unpacked, scratch files gone; a second call does not download again.
    let url = serve(body, 1);
    let good = Source {
        md5: &md5,
        url: &url,
        ..bad
    };
    let folder = download(&good, &dir, false).unwrap();
    assert_eq!(
        std::fs::read(folder.join("test_batch.bin")).unwrap(),
        payload
    );
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["cifar-10-batches-bin"]);
    assert_eq!(
        download(&good, &dir, false).unwrap(),
        folder,
        "already there: no request (the server is gone)"
    );

    // No server at all: a clear error.
    let gone = Source {
        url: "http://127.0.0.1:9/none.tar.gz",
        folder: "elsewhere",
        ..good
    };
    let e = download(&gone, &dir, false).unwrap_err().to_string();
    assert!(e.contains("download failed"), "{e}");
}
