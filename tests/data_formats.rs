//! The data set readers on small files written here: pixel layout, labels, and a clear error
//! naming the file for every kind of bad input.

#[path = "common/scratch.rs"]
mod scratch;

use host::data::formats::{cifar10, cifar100, image_folder, mnist, stl10, UNLABELED};
use host::Error;
use scratch::Scratch;
use std::io::Write;
use std::path::Path;

fn dir(name: &str) -> Scratch {
    let d = Scratch::new("data", name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A pixel value that encodes its position: image i, row y, column x, channel c.
fn value(i: usize, y: usize, x: usize, c: usize) -> u8 {
    ((i * 37 + y * 11 + x * 5 + c * 101) % 251) as u8
}

fn cifar_record(label: &[u8], i: usize) -> Vec<u8> {
    let mut r = label.to_vec();
    for c in 0..3 {
        for y in 0..32 {
            for x in 0..32 {
                r.push(value(i, y, x, c));
            }
        }
    }
    r
}

fn error_text(e: Error) -> String {
    e.to_string()
}

#[test]
fn cifar10_should_read_planar_records_into_hwc_and_refuse_bad_files() {
    let d = dir("cifar10");
    for b in 1..=5 {
        let bytes: Vec<u8> = (0..3)
            .flat_map(|i| cifar_record(&[(b + i) as u8 % 10], i))
            .collect();
        std::fs::write(d.join(format!("data_batch_{b}.bin")), bytes).unwrap();
    }
    std::fs::write(d.join("test_batch.bin"), cifar_record(&[7], 4)).unwrap();
    let (train, test) = cifar10(&d).unwrap();
    assert_eq!(
        (train.len(), test.len(), train.h, train.classes),
        (15, 1, 32, 10)
    );
    assert_eq!(train.labels[..3], [1, 2, 3]);
    assert_eq!(train.image(2)[(5 * 32 + 9) * 3 + 1], value(2, 5, 9, 1));
    assert_eq!(test.image(0)[(31 * 32 + 31) * 3 + 2], value(4, 31, 31, 2));
    // Truncated, and a label out of range.
    std::fs::write(d.join("test_batch.bin"), &cifar_record(&[7], 4)[..3000]).unwrap();
    let e = error_text(cifar10(&d).unwrap_err());
    assert!(
        e.contains("test_batch.bin") && e.contains("not a whole number"),
        "{e}"
    );
    std::fs::write(d.join("test_batch.bin"), cifar_record(&[12], 4)).unwrap();
    let e = error_text(cifar10(&d).unwrap_err());
    assert!(e.contains("label 12, expected 0..10"), "{e}");
    std::fs::remove_file(d.join("data_batch_3.bin")).unwrap();
    let e = error_text(cifar10(&d).unwrap_err());
    assert!(e.contains("data_batch_3.bin"), "{e}");
}

#[test]
fn cifar100_should_use_the_fine_labels() {
    let d = dir("cifar100");
    std::fs::write(
        d.join("train.bin"),
        [cifar_record(&[3, 42], 0), cifar_record(&[19, 99], 1)].concat(),
    )
    .unwrap();
    std::fs::write(d.join("test.bin"), cifar_record(&[0, 5], 2)).unwrap();
    let (train, test) = cifar100(&d).unwrap();
    assert_eq!(
        (train.labels.clone(), test.labels.clone(), train.classes),
        (vec![42, 99], vec![5], 100)
    );
    assert_eq!(train.image(1)[(3 * 32 + 4) * 3], value(1, 3, 4, 0));
}

fn stl_image(i: usize) -> Vec<u8> {
    // Column-major planes: byte c·96·96 + x·96 + y is pixel (y, x) of channel c.
    let mut v = vec![0u8; 3 * 96 * 96];
    for c in 0..3 {
        for x in 0..96 {
            for y in 0..96 {
                v[c * 9216 + x * 96 + y] = value(i, y, x, c);
            }
        }
    }
    v
}

#[test]
fn stl10_should_transpose_column_major_images_and_add_the_unlabelled_split() {
    let d = dir("stl10");
    std::fs::write(d.join("train_X.bin"), [stl_image(0), stl_image(1)].concat()).unwrap();
    std::fs::write(d.join("train_y.bin"), [3u8, 10]).unwrap();
    std::fs::write(d.join("test_X.bin"), stl_image(2)).unwrap();
    std::fs::write(d.join("test_y.bin"), [1u8]).unwrap();
    std::fs::write(
        d.join("unlabeled_X.bin"),
        [stl_image(3), stl_image(4), stl_image(5)].concat(),
    )
    .unwrap();
    let (train, test) = stl10(&d, false).unwrap();
    assert_eq!(
        (train.labels.clone(), test.labels.clone(), train.h),
        (vec![2, 9], vec![0], 96)
    );
    assert_eq!(train.image(1)[(10 * 96 + 70) * 3 + 2], value(1, 10, 70, 2));
    let (with_unlabeled, _) = stl10(&d, true).unwrap();
    assert_eq!(with_unlabeled.len(), 5);
    assert_eq!(with_unlabeled.labels[2..], [UNLABELED; 3]);
    assert_eq!(with_unlabeled.image(4)[(95 * 96) * 3], value(5, 95, 0, 0));
    std::fs::write(d.join("train_y.bin"), [3u8, 11]).unwrap();
    let e = error_text(stl10(&d, false).unwrap_err());
    assert!(
        e.contains("train_y.bin") && e.contains("expected 1..=10"),
        "{e}"
    );
    std::fs::write(d.join("train_y.bin"), [3u8]).unwrap();
    let e = error_text(stl10(&d, false).unwrap_err());
    assert!(e.contains("1 labels for 2 images"), "{e}");
}

fn idx_file(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    dims.iter().for_each(|d| v.extend(d.to_be_bytes()));
    v.extend_from_slice(payload);
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn mnist_should_read_idx_files_gzipped_or_not_and_check_their_magic() {
    let d = dir("mnist");
    let images: Vec<u8> = (0..2 * 28 * 28).map(|i| (i % 256) as u8).collect();
    std::fs::write(
        d.join("train-images-idx3-ubyte.gz"),
        gzip(&idx_file(0x803, &[2, 28, 28], &images)),
    )
    .unwrap();
    std::fs::write(
        d.join("train-labels-idx1-ubyte.gz"),
        gzip(&idx_file(0x801, &[2], &[4, 9])),
    )
    .unwrap();
    std::fs::write(
        d.join("t10k-images-idx3-ubyte"),
        idx_file(0x803, &[1, 28, 28], &images[..784]),
    )
    .unwrap();
    std::fs::write(
        d.join("t10k-labels-idx1-ubyte"),
        idx_file(0x801, &[1], &[0]),
    )
    .unwrap();
    let (train, test) = mnist(&d).unwrap();
    assert_eq!(
        (
            train.len(),
            test.len(),
            train.h,
            train.w,
            train.labels.clone()
        ),
        (2, 1, 28, 28, vec![4, 9])
    );
    let px = (784 + 3 * 28 + 5) % 256;
    assert_eq!(
        train.image(1)[(3 * 28 + 5) * 3..][..3],
        [px as u8; 3],
        "gray replicated to RGB"
    );
    std::fs::write(
        d.join("t10k-labels-idx1-ubyte"),
        idx_file(0x803, &[1], &[0]),
    )
    .unwrap();
    let e = error_text(mnist(&d).unwrap_err());
    assert!(
        e.contains("t10k-labels-idx1-ubyte") && e.contains("magic"),
        "{e}"
    );
    std::fs::write(
        d.join("t10k-labels-idx1-ubyte"),
        idx_file(0x801, &[1], &[0]),
    )
    .unwrap();
    std::fs::write(
        d.join("t10k-images-idx3-ubyte"),
        idx_file(0x803, &[1, 28, 28], &images[..700]),
    )
    .unwrap();
    let e = error_text(mnist(&d).unwrap_err());
    assert!(e.contains("truncated"), "{e}");
    // A header whose dimensions multiply past usize::MAX is an error, not an overflow.
    std::fs::write(
        d.join("t10k-images-idx3-ubyte"),
        idx_file(0x803, &[u32::MAX, u32::MAX, u32::MAX], &images[..784]),
    )
    .unwrap();
    let e = error_text(mnist(&d).unwrap_err());
    assert!(e.contains("more bytes than any file holds"), "{e}");
    std::fs::write(
        d.join("t10k-images-idx3-ubyte"),
        idx_file(0x803, &[1, 28, 28], &images[..784]),
    )
    .unwrap();
    std::fs::write(
        d.join("train-labels-idx1-ubyte.gz"),
        gzip(&idx_file(0x801, &[2], &[4, 10])),
    )
    .unwrap();
    let e = error_text(mnist(&d).unwrap_err());
    assert!(e.contains("label 1 is 10"), "{e}");
    std::fs::write(
        d.join("train-labels-idx1-ubyte.gz"),
        b"\x1f\x8bnot really gzip",
    )
    .unwrap();
    let e = error_text(mnist(&d).unwrap_err());
    assert!(e.contains("corrupt gzip"), "{e}");
}

fn write_image(path: &Path, colour: [u8; 3], size: u32) {
    image::RgbImage::from_pixel(size, size, image::Rgb(colour))
        .save(path)
        .unwrap();
}

#[test]
fn image_folders_should_read_classes_resize_and_split() {
    let d = dir("folder");
    for (c, name) in ["cat", "dog"].iter().enumerate() {
        std::fs::create_dir_all(d.join(name)).unwrap();
        for i in 0..10 {
            let ext = if i % 2 == 0 { "png" } else { "jpg" };
            write_image(
                &d.join(name).join(format!("{i:02}.{ext}")),
                [200 * c as u8, 50, 100],
                20 + i,
            );
        }
    }
    let (train, test) = image_folder(&d, 16).unwrap();
    assert_eq!(
        (train.len(), test.len(), train.h, train.classes),
        (18, 2, 16, 2),
        "every tenth image held out"
    );
    assert_eq!(train.labels.iter().filter(|&&l| l == 1).count(), 9);
    assert!(
        (train.image(10)[0] as i32 - 200).abs() <= 3,
        "dog images are red-ish"
    );
    // Fewer than ten images a class: the last of each class with two or more is held out.
    let small = dir("folder-small");
    for (name, n) in [("a", 3), ("b", 2), ("c", 1)] {
        std::fs::create_dir_all(small.join(name)).unwrap();
        for i in 0..n {
            write_image(&small.join(name).join(format!("{i}.png")), [1, 2, 3], 8);
        }
    }
    let (train, test) = image_folder(&small, 8).unwrap();
    assert_eq!((train.len(), test.len(), train.classes), (4, 2, 3));
    assert_eq!(test.labels, [0, 1], "one held out of a and of b, none of c");
    // Explicit train/ and test/ folders win.
    let split = dir("folder-split");
    for part in ["train", "test"] {
        for name in ["a", "b", "c"] {
            std::fs::create_dir_all(split.join(part).join(name)).unwrap();
            write_image(&split.join(part).join(name).join("x.png"), [1, 2, 3], 8);
        }
    }
    let (train, test) = image_folder(&split, 8).unwrap();
    assert_eq!((train.len(), test.len(), train.classes), (3, 3, 3));
    // An undecodable image is named.
    std::fs::write(d.join("cat").join("05.jpg"), b"not a jpeg").unwrap();
    let e = error_text(image_folder(&d, 16).unwrap_err());
    assert!(e.contains("05.jpg") && e.contains("cannot decode"), "{e}");
    let e = error_text(image_folder(&dir("empty"), 16).unwrap_err());
    assert!(e.contains("no class subfolders"), "{e}");
}
