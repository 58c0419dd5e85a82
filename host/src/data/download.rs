//! Downloads of the standard data sets from their official addresses, checked against the
//! published MD5 sums, unpacked next to the archive. The archive goes to a `.part` file first
//! and is unpacked into a scratch folder that is renamed into place only when complete, so an
//! interrupted or corrupted download never leaves something that looks like a data set.

use crate::error::{Error, Result};
use md5::{Digest, Md5};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// One downloadable data set.
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    pub name: &'a str,
    pub url: &'a str,
    pub md5: &'a str,
    /// The folder the archive unpacks to.
    pub folder: &'a str,
}

/// The official archives (binary versions) and their published checksums.
pub const SOURCES: [Source<'static>; 3] = [
    Source {
        name: "cifar10",
        url: "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        md5: "c32a1d4ab5d03f1284b67883e8d87530",
        folder: "cifar-10-batches-bin",
    },
    Source {
        name: "cifar100",
        url: "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        md5: "03b5dce01913d631647c71ecec9e9cb8",
        folder: "cifar-100-binary",
    },
    Source {
        name: "stl10",
        url: "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
        md5: "91f7769df0f17e558f3565bffb0c7dfb",
        folder: "stl10_binary",
    },
];

/// The source of a data set name.
pub fn source(name: &str) -> Result<Source<'static>> {
    SOURCES
        .iter()
        .copied()
        .find(|s| s.name == name)
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "no download for {name:?}: expected cifar10, cifar100 or stl10"
            ))
        })
}

/// Fetches `src` into `dir` unless `dir/src.folder` exists; returns that folder.
pub fn download(src: &Source<'_>, dir: &Path, progress: bool) -> Result<PathBuf> {
    let target = dir.join(src.folder);
    if target.is_dir() {
        return Ok(target);
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let part = dir.join(format!(".{}.tar.gz.part", src.name));
    let bad = |reason: String| Error::Data {
        path: PathBuf::from(src.url),
        reason,
    };
    let mut response = ureq::get(src.url)
        .call()
        .map_err(|e| bad(format!("download failed ({e})")))?;
    let total = response.body().content_length();
    let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
    let mut file = std::fs::File::create(&part).map_err(|e| Error::io(&part, e))?;
    let (mut hash, mut buf, mut done) = (Md5::new(), vec![0u8; 1 << 16], 0u64);
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| bad(format!("download interrupted ({e})")))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(|e| Error::io(&part, e))?;
        done += n as u64;
        if progress {
            eprint!(
                "\r{}: {:.1} MB{}",
                src.name,
                done as f64 / 1e6,
                total.map_or(String::new(), |t| format!(" of {:.1}", t as f64 / 1e6))
            );
        }
    }
    if progress {
        eprintln!();
    }
    drop(file);
    let got: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if got != src.md5 {
        let _ = std::fs::remove_file(&part);
        return Err(bad(format!(
            "checksum mismatch: expected MD5 {}, got {got}; nothing was kept",
            src.md5
        )));
    }
    let scratch = dir.join(format!(".{}.unpacking", src.name));
    let _ = std::fs::remove_dir_all(&scratch);
    let archive = std::fs::File::open(&part).map_err(|e| Error::io(&part, e))?;
    tar::Archive::new(flate2::read::GzDecoder::new(archive))
        .unpack(&scratch)
        .map_err(|e| Error::Data {
            path: part.clone(),
            reason: format!("cannot unpack the archive ({e})"),
        })?;
    let unpacked = scratch.join(src.folder);
    if !unpacked.is_dir() {
        return Err(Error::Data {
            path: part,
            reason: format!("the archive has no folder {}", src.folder),
        });
    }
    std::fs::rename(&unpacked, &target).map_err(|e| Error::io(&target, e))?;
    let _ = std::fs::remove_dir_all(&scratch);
    let _ = std::fs::remove_file(&part);
    Ok(target)
}
