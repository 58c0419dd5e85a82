//! Readers of the standard data sets' files, into [`Dataset`]s (`u8` NHWC RGB).
//!
//! - CIFAR-10 / CIFAR-100 binary (`cifar-10-batches-bin/`, `cifar-100-binary/`): records of
//!   label byte(s) then 3072 bytes, R, G and B planes of 32×32.
//! - STL-10 binary (`stl10_binary/`): `*_X.bin` images of 3 planes of 96×96 stored column-major,
//!   `*_y.bin` labels 1–10; `unlabeled_X.bin` joins pre-training with label [`UNLABELED`].
//! - MNIST IDX (`train-images-idx3-ubyte`, …; gzipped or not): gray 28×28, replicated to RGB.
//! - An image folder: one subfolder per class (sorted names are the labels), PNG or JPEG,
//!   resized to a square; `train/` and `test/` subfolders when present, else every tenth image
//!   of each class is held out (the last one of a class of 2 to 9 images).
//!
//! Every failure names the file and says what was expected.

use super::Dataset;
use crate::error::{Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Label of images without one (STL-10's unlabelled split): used for pre-training only.
pub const UNLABELED: u16 = u16::MAX;

/// Labelled image files: (class index, path).
type Labelled = Vec<(usize, PathBuf)>;

fn data_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Data {
        path: path.into(),
        reason: reason.into(),
    }
}

/// The whole file, gunzipped when it starts with gzip's magic bytes.
fn read_file(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| data_error(path, format!("corrupt gzip data ({e})")))?;
        return Ok(out);
    }
    Ok(raw)
}

/// The first of `names` that exists in `dir`, or an error listing what was looked for.
fn find(dir: &Path, names: &[&str]) -> Result<PathBuf> {
    names
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.exists())
        .ok_or_else(|| data_error(dir, format!("none of {} found here", names.join(", "))))
}

/// CIFAR records: `label_bytes` label bytes (the last is used) then 3×32×32 planar pixels.
fn cifar_records(
    files: &[PathBuf],
    label_bytes: usize,
    classes: usize,
    name: &str,
) -> Result<Dataset> {
    let record = label_bytes + 3072;
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for path in files {
        let bytes = read_file(path)?;
        if bytes.is_empty() || bytes.len() % record != 0 {
            return Err(data_error(path, format!("{} bytes is not a whole number of {record}-byte CIFAR records (truncated or not CIFAR)", bytes.len())));
        }
        for (i, r) in bytes.chunks_exact(record).enumerate() {
            let label = r[label_bytes - 1] as usize;
            if label >= classes {
                return Err(data_error(
                    path,
                    format!("record {i} has label {label}, expected 0..{classes}"),
                ));
            }
            labels.push(label as u16);
            let px = &r[label_bytes..];
            for p in 0..1024 {
                images.extend_from_slice(&[px[p], px[1024 + p], px[2048 + p]]);
            }
        }
    }
    Ok(Dataset {
        name: name.into(),
        images,
        labels,
        h: 32,
        w: 32,
        classes,
    })
}

/// CIFAR-10 from the folder of the binary version: (train, test).
pub fn cifar10(dir: &Path) -> Result<(Dataset, Dataset)> {
    let dir = if dir.join("cifar-10-batches-bin").is_dir() {
        dir.join("cifar-10-batches-bin")
    } else {
        dir.to_path_buf()
    };
    let train: Vec<PathBuf> = (1..=5)
        .map(|i| find(&dir, &[&format!("data_batch_{i}.bin")]))
        .collect::<Result<_>>()?;
    let test = [find(&dir, &["test_batch.bin"])?];
    Ok((
        cifar_records(&train, 1, 10, "cifar10-train")?,
        cifar_records(&test, 1, 10, "cifar10-test")?,
    ))
}

/// CIFAR-100 (fine labels) from the folder of the binary version: (train, test).
pub fn cifar100(dir: &Path) -> Result<(Dataset, Dataset)> {
    let dir = if dir.join("cifar-100-binary").is_dir() {
        dir.join("cifar-100-binary")
    } else {
        dir.to_path_buf()
    };
    let (train, test) = (find(&dir, &["train.bin"])?, find(&dir, &["test.bin"])?);
    Ok((
        cifar_records(&[train], 2, 100, "cifar100-train")?,
        cifar_records(&[test], 2, 100, "cifar100-test")?,
    ))
}

/// STL-10 images from one `*_X.bin` file (column-major planes of 96×96) into HWC.
fn stl_images(path: &Path) -> Result<(Vec<u8>, usize)> {
    const SIDE: usize = 96;
    const SIZE: usize = 3 * SIDE * SIDE;
    let raw = read_file(path)?;
    if raw.is_empty() || raw.len() % SIZE != 0 {
        return Err(data_error(
            path,
            format!(
                "{} bytes is not a whole number of 96×96×3 STL-10 images",
                raw.len()
            ),
        ));
    }
    let n = raw.len() / SIZE;
    let mut out = vec![0u8; raw.len()];
    for (img, dst) in raw.chunks_exact(SIZE).zip(out.chunks_exact_mut(SIZE)) {
        for c in 0..3 {
            for x in 0..SIDE {
                for y in 0..SIDE {
                    dst[(y * SIDE + x) * 3 + c] = img[c * SIDE * SIDE + x * SIDE + y];
                }
            }
        }
    }
    Ok((out, n))
}

fn stl_split(dir: &Path, split: &str, name: &str) -> Result<Dataset> {
    let (images, n) = stl_images(&find(dir, &[&format!("{split}_X.bin")])?)?;
    let label_path = find(dir, &[&format!("{split}_y.bin")])?;
    let raw = read_file(&label_path)?;
    if raw.len() != n {
        return Err(data_error(
            &label_path,
            format!("{} labels for {n} images", raw.len()),
        ));
    }
    let labels = raw
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            if (1..=10).contains(&l) {
                Ok(l as u16 - 1)
            } else {
                Err(data_error(
                    &label_path,
                    format!("label {i} is {l}, expected 1..=10"),
                ))
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Dataset {
        name: name.into(),
        images,
        labels,
        h: 96,
        w: 96,
        classes: 10,
    })
}

/// STL-10: (train, test); with `unlabeled`, the 100,000 unlabelled images join the training
/// split with label [`UNLABELED`] (pre-training sees them; the kNN bank does not).
pub fn stl10(dir: &Path, unlabeled: bool) -> Result<(Dataset, Dataset)> {
    let dir = if dir.join("stl10_binary").is_dir() {
        dir.join("stl10_binary")
    } else {
        dir.to_path_buf()
    };
    let mut train = stl_split(&dir, "train", "stl10-train")?;
    let test = stl_split(&dir, "test", "stl10-test")?;
    if unlabeled {
        let (images, n) = stl_images(&find(&dir, &["unlabeled_X.bin"])?)?;
        train.images.extend(images);
        train.labels.extend(std::iter::repeat_n(UNLABELED, n));
        train.name = "stl10-train+unlabeled".into();
    }
    Ok((train, test))
}

/// One IDX file: its dimensions and payload, checked against the expected magic.
fn idx(path: &Path, dims: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let bytes = read_file(path)?;
    let magic = 0x0800 | dims as u32;
    if bytes.len() < 4 + 4 * dims
        || u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) != magic
    {
        return Err(data_error(path, format!("not an IDX file of unsigned bytes with {dims} dimensions (expected magic {magic:#010x})")));
    }
    let shape: Vec<usize> = (0..dims)
        .map(|d| u32::from_be_bytes(bytes[4 + 4 * d..8 + 4 * d].try_into().unwrap()) as usize)
        .collect();
    let payload = bytes[4 + 4 * dims..].to_vec();
    // A corrupt header can claim more bytes than a usize counts.
    let expected = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if expected != Some(payload.len()) {
        let claimed = expected.map_or("more bytes than any file holds".into(), |n| {
            format!("{n} bytes")
        });
        return Err(data_error(
            path,
            format!(
                "header says {shape:?} ({claimed}), the file holds {} (truncated?)",
                payload.len()
            ),
        ));
    }
    Ok((shape, payload))
}

fn mnist_split(dir: &Path, prefix: &str, name: &str) -> Result<Dataset> {
    let img_names = [
        format!("{prefix}-images-idx3-ubyte"),
        format!("{prefix}-images-idx3-ubyte.gz"),
        format!("{prefix}-images.idx3-ubyte"),
    ];
    let lbl_names = [
        format!("{prefix}-labels-idx1-ubyte"),
        format!("{prefix}-labels-idx1-ubyte.gz"),
        format!("{prefix}-labels.idx1-ubyte"),
    ];
    let img_path = find(
        dir,
        &img_names.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    let lbl_path = find(
        dir,
        &lbl_names.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    let (shape, gray) = idx(&img_path, 3)?;
    let (lshape, raw_labels) = idx(&lbl_path, 1)?;
    if lshape[0] != shape[0] {
        return Err(data_error(
            &lbl_path,
            format!(
                "{} labels for {} images in {}",
                lshape[0],
                shape[0],
                img_path.display()
            ),
        ));
    }
    let labels = raw_labels
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            if l < 10 {
                Ok(l as u16)
            } else {
                Err(data_error(
                    &lbl_path,
                    format!("label {i} is {l}, expected 0..10"),
                ))
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let images = gray.iter().flat_map(|&v| [v, v, v]).collect();
    Ok(Dataset {
        name: name.into(),
        images,
        labels,
        h: shape[1],
        w: shape[2],
        classes: 10,
    })
}

/// MNIST (or Fashion-MNIST) from IDX files, gzipped or not: (train, test).
pub fn mnist(dir: &Path) -> Result<(Dataset, Dataset)> {
    Ok((
        mnist_split(dir, "train", "mnist-train")?,
        mnist_split(dir, "t10k", "mnist-test")?,
    ))
}

/// Class folders of `root`, sorted, and their image files, sorted.
fn class_files(root: &Path) -> Result<Vec<(String, Vec<PathBuf>)>> {
    let list = |dir: &Path| -> Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        v.sort();
        Ok(v)
    };
    let mut classes = Vec::new();
    for dir in list(root)?.into_iter().filter(|p| p.is_dir()) {
        let files: Vec<PathBuf> = list(&dir)?
            .into_iter()
            .filter(|p| {
                p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg")
                })
            })
            .collect();
        classes.push((
            dir.file_name().unwrap().to_string_lossy().into_owned(),
            files,
        ));
    }
    if classes.is_empty() {
        return Err(data_error(
            root,
            "no class subfolders (expected one folder of PNG/JPEG images per class)",
        ));
    }
    Ok(classes)
}

fn decode(path: &Path, size: usize) -> Result<Vec<u8>> {
    let img = image::open(path)
        .map_err(|e| data_error(path, format!("cannot decode the image ({e})")))?;
    Ok(image::imageops::resize(
        &img.to_rgb8(),
        size as u32,
        size as u32,
        image::imageops::FilterType::CatmullRom,
    )
    .into_raw())
}

fn folder_dataset(
    files: &[(usize, PathBuf)],
    size: usize,
    classes: usize,
    name: &str,
) -> Result<Dataset> {
    use rayon::prelude::*;
    let decoded: Vec<Vec<u8>> = files
        .par_iter()
        .map(|(_, p)| decode(p, size))
        .collect::<Result<_>>()?;
    Ok(Dataset {
        name: name.into(),
        images: decoded.concat(),
        labels: files.iter().map(|(c, _)| *c as u16).collect(),
        h: size,
        w: size,
        classes,
    })
}

/// Whether image `i` of a class of `n` is held out when a folder has no split: every tenth,
/// and in a class of 2 to 9 images its last one, so that small folders still have a test set
/// covering every class that can spare an image.
fn held_out(i: usize, n: usize) -> bool {
    i % 10 == 9 || ((2..10).contains(&n) && i == n - 1)
}

/// An image folder, resized to `size × size`: (train, test).
pub fn image_folder(root: &Path, size: usize) -> Result<(Dataset, Dataset)> {
    let split = ["test", "val"]
        .iter()
        .map(|s| root.join(s))
        .find(|p| p.is_dir());
    let (train, test): (Labelled, Labelled) = match (root.join("train").is_dir(), split) {
        (true, Some(test_dir)) => {
            let train_classes = class_files(&root.join("train"))?;
            let names: Vec<&String> = train_classes.iter().map(|(n, _)| n).collect();
            let test_classes = class_files(&test_dir)?;
            let mut test = Vec::new();
            for (name, files) in &test_classes {
                let c = names.iter().position(|n| *n == name).ok_or_else(|| {
                    data_error(&test_dir.join(name), "a class that train/ does not have")
                })?;
                test.extend(files.iter().map(|f| (c, f.clone())));
            }
            let train = train_classes
                .iter()
                .enumerate()
                .flat_map(|(c, (_, f))| f.iter().map(move |p| (c, p.clone())))
                .collect();
            (train, test)
        }
        _ => {
            let (mut train, mut test) = (Vec::new(), Vec::new());
            for (c, (_, files)) in class_files(root)?.iter().enumerate() {
                for (i, p) in files.iter().enumerate() {
                    if held_out(i, files.len()) {
                        test.push((c, p.clone()));
                    } else {
                        train.push((c, p.clone()));
                    }
                }
            }
            (train, test)
        }
    };
    let classes = train.iter().map(|(c, _)| c + 1).max().unwrap_or(0);
    if train.is_empty() || test.is_empty() {
        return Err(data_error(
            root,
            format!(
                "{} training and {} held-out images: both splits need images",
                train.len(),
                test.len()
            ),
        ));
    }
    Ok((
        folder_dataset(&train, size, classes, "folder-train")?,
        folder_dataset(&test, size, classes, "folder-test")?,
    ))
}
