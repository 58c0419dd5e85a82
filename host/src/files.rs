//! Writing files so that a crash never leaves half of one: a temporary file in the same
//! folder, then a rename (atomic on POSIX file systems). Also the two tensor formats the
//! project writes: safetensors (checkpoints, data, embeddings) and NumPy's `.npy`.

use crate::error::{Error, Result};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// A tensor to write: name, element type, shape and little-endian bytes.
pub struct Tensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl Tensor {
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> Self {
        let bytes = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        Tensor {
            name: name.into(),
            dtype: Dtype::F32,
            shape,
            bytes,
        }
    }
    pub fn u16(name: impl Into<String>, shape: Vec<usize>, values: &[u16]) -> Self {
        let bytes = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        Tensor {
            name: name.into(),
            dtype: Dtype::U16,
            shape,
            bytes,
        }
    }
    pub fn u8(name: impl Into<String>, shape: Vec<usize>, values: &[u8]) -> Self {
        Tensor {
            name: name.into(),
            dtype: Dtype::U8,
            shape,
            bytes: values.to_vec(),
        }
    }
}

/// Writes `tensors` and `metadata` as one safetensors file, atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &[Tensor],
    metadata: HashMap<String, String>,
) -> Result<()> {
    for t in tensors {
        refuse_non_finite(path, t)?;
    }
    let views = tensors.iter().map(|t| {
        let view = TensorView::new(t.dtype, t.shape.clone(), &t.bytes);
        (t.name.as_str(), view.expect("shape matches bytes"))
    });
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| Error::Data {
        path: path.into(),
        reason: format!("cannot serialise as safetensors ({e})"),
    })?;
    write_atomic(path, &sorted_header(bytes))
}

/// The values of little-endian f32 bytes (a safetensors tensor's data, [`Tensor::bytes`]).
pub fn f32_values(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// An error naming the file and the tensor when a float tensor holds NaN or infinity: a
/// diverged network is never written as if it were a result.
fn refuse_non_finite(path: &Path, t: &Tensor) -> Result<()> {
    if !matches!(t.dtype, Dtype::F32) {
        return Ok(());
    }
    match f32_values(&t.bytes)
        .enumerate()
        .find(|(_, x)| !x.is_finite())
    {
        None => Ok(()),
        Some((i, x)) => Err(Error::Data {
            path: path.into(),
            reason: format!(
                "tensor {} holds {x} at index {i} (a diverged run?): nothing written",
                t.name
            ),
        }),
    }
}

/// The same file with its JSON header's keys sorted. safetensors writes the metadata map in
/// hash order, which differs from one process to the next, so the same export written twice
/// could differ in its bytes. serde_json's map is ordered, and the JSON is the same text in
/// another order, so the header keeps its length (padded with spaces, as safetensors pads it)
/// and the data offsets stay valid.
fn sorted_header(mut bytes: Vec<u8>) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("an 8-byte length")) as usize;
    let header: serde_json::Value =
        serde_json::from_slice(&bytes[8..8 + n]).expect("safetensors writes a JSON header");
    let sorted = serde_json::to_vec(&header).expect("JSON serialises");
    assert!(sorted.len() <= n, "the same JSON in another order");
    bytes[8..8 + sorted.len()].copy_from_slice(&sorted);
    bytes[8 + sorted.len()..8 + n].fill(b' ');
    bytes
}

/// Writes one tensor as a NumPy `.npy` file (format 1.0: magic, a header dict padded to a
/// multiple of 64 bytes, then the data in C order), atomically.
pub fn write_npy(path: &Path, t: &Tensor) -> Result<()> {
    refuse_non_finite(path, t)?;
    let descr = match t.dtype {
        Dtype::F32 => "<f4",
        Dtype::U16 => "<u2",
        Dtype::U8 => "|u1",
        d => {
            return Err(Error::InvalidArgument(format!(
                "{}: no .npy type for {d:?}",
                path.display()
            )))
        }
    };
    let dims: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // magic (6) + version (2) + header length (2) + header, ending in a newline.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(&t.bytes);
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` atomically, creating its folder if missing. When the write or the
/// rename fails (a full disk, a folder in the way) the temporary file is removed and `path`
/// keeps its old content; the error names `path`, not the temporary file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    // The data reaches the disk before the rename does, so that a power cut cannot leave the
    // new name on an empty or partial file (a rename alone only guards against the process
    // dying mid-write).
    let written = std::fs::File::create(&tmp)
        .and_then(|mut file| {
            std::io::Write::write_all(&mut file, bytes)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Error::io(path, e));
    if written.is_err() {
        // Best effort: the write's own error is the one worth reporting.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The records of a JSON-lines file's `text` (`metrics.jsonl`), each with its line, in order.
/// A last line without its newline is a record a killed run was writing: it is left out. Any
/// other line that is not JSON is an error naming `path` and the line.
pub fn parse_jsonl<'t>(path: &Path, text: &'t str) -> Result<Vec<(&'t str, serde_json::Value)>> {
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut records = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(record) => records.push((*line, record)),
            Err(_) if i + 1 == lines.len() && !complete => {}
            Err(e) => {
                return Err(Error::Data {
                    path: path.into(),
                    reason: format!("line {} is not a JSON record ({e})", i + 1),
                })
            }
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each HashMap draws its own hash keys, so without the sorted header these writes
    /// of four metadata entries come out in several orders.
    #[test]
    fn the_same_safetensors_content_should_give_the_same_bytes() {
        let dir = std::env::temp_dir().join(format!("byol-safetensors-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |i: usize| {
            let meta = HashMap::from(
                ["dataset", "classes", "checkpoint", "format"]
                    .map(|k| (k.to_string(), format!("{k}-é"))),
            );
            let tensors = [
                Tensor::f32("b.weight", vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
                Tensor::u8("a.images", vec![3], &[7, 8, 9]),
                Tensor::u16("c.labels", vec![1], &[65535]),
            ];
            let path = dir.join(format!("{i}.safetensors"));
            write_safetensors(&path, &tensors, meta).unwrap();
            std::fs::read(path).unwrap()
        };
        let first = write(0);
        for i in 1..16 {
            assert!(write(i) == first, "write {i} differs from the first");
        }
        let st = safetensors::SafeTensors::deserialize(&first).unwrap();
        assert_eq!(st.tensor("a.images").unwrap().data(), &[7, 8, 9]);
        assert_eq!(st.tensor("c.labels").unwrap().data(), &[255, 255]);
        let b = st.tensor("b.weight").unwrap();
        assert_eq!(
            (b.shape(), &b.data()[20..24]),
            (&[2, 3][..], &6f32.to_le_bytes()[..])
        );
        let (_, meta) = safetensors::SafeTensors::read_metadata(&first).unwrap();
        let meta = meta.metadata().clone().unwrap();
        assert_eq!(meta.len(), 4);
        assert_eq!(meta["classes"], "classes-é");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A file already there keeps its content when the new tensors hold NaN or infinity,
    /// in both formats, and the error names the file, the tensor and the index.
    #[test]
    fn non_finite_tensors_should_be_refused_and_the_old_file_kept() {
        let dir = std::env::temp_dir().join(format!("byol-non-finite-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = || Tensor::f32("w", vec![3], &[1.0, 2.0, 3.0]);
        for bad_value in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let bad = || Tensor::f32("online.w", vec![3], &[1.0, 2.0, bad_value]);
            let st = dir.join("c.safetensors");
            write_safetensors(&st, &[good()], HashMap::new()).unwrap();
            let before = std::fs::read(&st).unwrap();
            let tensors = [good(), bad()];
            let e = write_safetensors(&st, &tensors, HashMap::new()).unwrap_err();
            let e = e.to_string();
            assert!(e.contains("c.safetensors") && e.contains("online.w"), "{e}");
            assert!(e.contains(&format!("{bad_value} at index 2")), "{e}");
            assert_eq!(std::fs::read(&st).unwrap(), before);
            let npy = dir.join("x.npy");
            write_npy(&npy, &good()).unwrap();
            let before = std::fs::read(&npy).unwrap();
            let e = write_npy(&npy, &bad()).unwrap_err().to_string();
            assert!(e.contains("x.npy") && e.contains("online.w"), "{e}");
            assert_eq!(std::fs::read(&npy).unwrap(), before);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn jsonl_should_leave_out_only_a_last_line_cut_short() {
        let path = Path::new("m.jsonl");
        let kinds = |text: &str| -> Vec<String> {
            let records = parse_jsonl(path, text).unwrap();
            records.iter().map(|(_, r)| r["k"].to_string()).collect()
        };
        assert_eq!(kinds("{\"k\":1}\n{\"k\":2}\n"), ["1", "2"]);
        assert_eq!(kinds("{\"k\":1}\n{\"k\":2}\n{\"k\":"), ["1", "2"]);
        assert_eq!(kinds("{\"k\":1}\n{\"k\":2}"), ["1", "2"]);
        assert_eq!(kinds(""), Vec::<String>::new());
        // A broken line that is not the last one, or that ends in its newline, is an error.
        for text in ["{\"k\":1}\n{\"k\":\n{\"k\":3}\n", "{\"k\":1}\n{\"k\":\n"] {
            let e = parse_jsonl(path, text).unwrap_err().to_string();
            assert!(e.starts_with("m.jsonl: line 2 is not a JSON record"), "{e}");
        }
    }

    #[test]
    fn npy_files_should_have_numpys_header_and_c_order_data() {
        let dir = std::env::temp_dir().join(format!("byol-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.npy");
        write_npy(
            &path,
            &Tensor::f32("x", vec![2, 3], &[1., 2., 3., 4., 5., 6.]),
        )
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + len) % 64, 0, "data starts on a 64-byte boundary");
        let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
        assert_eq!(
            header.trim_end(),
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"
        );
        assert!(header.ends_with('\n'));
        assert_eq!(
            bytes.len(),
            10 + len + 6 * 4,
            "six f32 values after the header"
        );
        let data: Vec<f32> = f32_values(&bytes[10 + len..]).collect();
        assert_eq!(data, [1., 2., 3., 4., 5., 6.]);
        write_npy(&path, &Tensor::u16("y", vec![3], &[7, 8, 9])).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("'descr': '<u2'") && text.contains("'shape': (3,)"));
        assert_eq!(&bytes[bytes.len() - 6..], [7, 0, 8, 0, 9, 0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn write_atomic_should_replace_the_file_and_leave_no_temporary() {
        let dir = std::env::temp_dir().join(format!("byol-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.json");
        super::write_atomic(&path, b"one").unwrap();
        super::write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(!dir.join("a.json.tmp").exists());
        // A missing folder is made (`export` and `export-data` to a new folder).
        let _ = std::fs::remove_dir_all(dir.join("missing"));
        super::write_atomic(&dir.join("missing/new/b.json"), b"x").unwrap();
        assert_eq!(std::fs::read(dir.join("missing/new/b.json")).unwrap(), b"x");
        // A folder where the file should go: the rename fails, the temporary goes away, and
        // the error names the file asked for.
        let blocked = dir.join("blocked");
        std::fs::create_dir_all(blocked.join("inside")).unwrap();
        let e = super::write_atomic(&blocked, b"x").unwrap_err();
        assert!(
            matches!(&e, Error::Io { path, .. } if *path == blocked),
            "{e}"
        );
        assert!(!dir.join("blocked.tmp").exists());
        assert!(blocked.join("inside").is_dir());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
