//! Finding the NVIDIA libraries at run time. The GPU machines this project targets have the
//! driver (`libcuda.so.1`) but may have cuBLAS and cuDNN only inside Python wheels
//! (`nvidia-cublas`, `nvidia-cudnn-cu13`, …), whose `lib` folders are not on the loader's path.
//! [`preload`] opens every library found in those folders by its full path, with global
//! symbols, before `cudarc` asks the loader for it by name: the loader then answers with the
//! copy already loaded (it matches the soname), and cuDNN's own sub-libraries are found beside
//! it. [`search_folders`] is what `host gpu-info` lists.

use std::path::{Path, PathBuf};

/// The libraries cudarc opens by name, as their wheels ship them.
const LIBRARIES: &[&str] = &[
    "libcublasLt.so.13",
    "libcublas.so.13",
    "libnvrtc.so.13",
    "libcudnn.so.9",
];

/// Folders that may hold the libraries, in search order: `BYOL_CUDA_LIBS` (colon-separated),
/// `LD_LIBRARY_PATH`, the `lib` folders of the `nvidia` package in every Python
/// `site-packages` / `dist-packages` under `/usr`, `/usr/local`, `$VIRTUAL_ENV`, `~/.local`
/// and `/opt/conda`, and where the `python3` on the PATH has it; then `/usr/local/cuda/lib64`.
pub fn search_folders() -> Vec<PathBuf> {
    let mut folders: Vec<PathBuf> = Vec::new();
    for var in ["BYOL_CUDA_LIBS", "LD_LIBRARY_PATH"] {
        if let Ok(v) = std::env::var(var) {
            folders.extend(v.split(':').filter(|s| !s.is_empty()).map(PathBuf::from));
        }
    }
    let mut prefixes = vec![
        PathBuf::from("/usr"),
        PathBuf::from("/usr/local"),
        PathBuf::from("/opt/conda"),
    ];
    if let Ok(v) = std::env::var("VIRTUAL_ENV") {
        prefixes.push(PathBuf::from(v));
    }
    if let Ok(h) = std::env::var("HOME") {
        prefixes.push(Path::new(&h).join(".local"));
    }
    for prefix in prefixes {
        for lib in ["lib", "lib64"] {
            for python in children(&prefix.join(lib)) {
                if !file_name_starts(&python, "python3") {
                    continue;
                }
                for packages in ["site-packages", "dist-packages"] {
                    let nvidia = python.join(packages).join("nvidia");
                    for component in children(&nvidia) {
                        let lib = component.join("lib");
                        if lib.is_dir() {
                            folders.push(lib);
                        }
                    }
                }
            }
        }
    }
    folders.extend(python_nvidia_folders());
    folders.push(PathBuf::from("/usr/local/cuda/lib64"));
    let mut seen = std::collections::HashSet::new();
    folders.retain(|f| f.is_dir() && seen.insert(f.canonicalize().unwrap_or_else(|_| f.clone())));
    folders
}

/// The `lib` folders of the `nvidia` package as the `python3` on the PATH sees it (pyenv,
/// conda and virtual environments included); none without Python or the package.
fn python_nvidia_folders() -> Vec<PathBuf> {
    let probe = "import nvidia, os; print('\\n'.join(nvidia.__path__))";
    let Ok(out) = std::process::Command::new("python3")
        .args(["-c", probe])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .flat_map(|root| children(Path::new(root.trim())))
        .map(|component| component.join("lib"))
        .filter(|lib| lib.is_dir())
        .collect()
}

fn children(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn file_name_starts(p: &Path, prefix: &str) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(prefix))
}

/// Where each library was found in `folders` ([`search_folders`]): `(name, Some(path))` or
/// `(name, None)`.
pub fn locate(folders: &[PathBuf]) -> Vec<(&'static str, Option<PathBuf>)> {
    LIBRARIES
        .iter()
        .map(|&name| {
            let found = folders.iter().map(|f| f.join(name)).find(|p| p.is_file());
            (name, found)
        })
        .collect()
}

/// Opens every library [`locate`] finds, once per process (see the module's comment).
/// Libraries not found are left to the loader's own search.
pub fn preload() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for (_, path) in locate(&search_folders()) {
            if let Some(path) = path {
                // SAFETY: loading an NVIDIA library runs its initialisers, as cudarc's own
                // loading would; the handle is leaked so the library stays loaded.
                let flags = libc_flags();
                if let Ok(lib) = unsafe { libloading::os::unix::Library::open(Some(&path), flags) }
                {
                    std::mem::forget(lib);
                }
            }
        }
    });
}

/// `RTLD_NOW | RTLD_GLOBAL`.
fn libc_flags() -> i32 {
    libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL
}

/// The library path a GPU process should run with, when it differs from its own: the wheels'
/// folders [`search_folders`] found, and a private folder naming NCCL's `libnccl.so.2` (the
/// only name its wheel ships) `libnccl.so`, a name cudarc's loader tries. `None` when the
/// current path already holds them. The loader reads its path once, at start: `main` runs
/// itself again with this one (see [`BYOL_LIBRARY_PATH_SET`]).
pub fn library_path() -> Option<String> {
    if std::env::var_os(BYOL_LIBRARY_PATH_SET).is_some() {
        return None;
    }
    let current = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    let on_path: Vec<&str> = current.split(':').filter(|s| !s.is_empty()).collect();
    let folders = search_folders();
    let mut add: Vec<PathBuf> = folders
        .iter()
        .filter(|f| !on_path.iter().any(|p| Path::new(p) == *f))
        .cloned()
        .collect();
    let has = |name: &str| folders.iter().any(|f| f.join(name).is_file());
    if !has("libnccl.so") {
        if let Some(real) = folders
            .iter()
            .map(|f| f.join("libnccl.so.2"))
            .find(|p| p.is_file())
        {
            // One folder per library found (reused by later runs), named by its path's hash.
            let tag = crate::dist::checksum(real.to_string_lossy().bytes());
            let alias = std::env::temp_dir().join(format!("byol-nccl-{tag:016x}"));
            let link = alias.join("libnccl.so");
            let made = std::fs::create_dir_all(&alias).and_then(|()| {
                match std::os::unix::fs::symlink(&real, &link) {
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                    other => other,
                }
            });
            if made.is_ok() {
                add.insert(0, alias);
            }
        }
    }
    if add.is_empty() {
        return None;
    }
    let mut path: Vec<String> = add.iter().map(|p| p.display().to_string()).collect();
    path.extend(on_path.iter().map(|s| s.to_string()));
    Some(path.join(":"))
}

/// Set in the environment of the process `main` starts again with [`library_path`], so that it
/// does not start itself a third time.
pub const BYOL_LIBRARY_PATH_SET: &str = "BYOL_LIBRARY_PATH_SET";

/// The versions of cuDNN and NCCL as their libraries report them (no GPU needed), or why not:
/// what `host gpu-info` prints before it opens the GPU, proving the libraries load.
pub fn loadable_versions() -> Vec<(&'static str, std::result::Result<String, String>)> {
    preload();
    // SAFETY: the presence checks only try to load the libraries; the version calls take no
    // device and write one integer.
    let cudnn = if unsafe { cudarc::cudnn::sys::is_culib_present() } {
        Ok(cudarc::cudnn::result::get_version().to_string())
    } else {
        Err("libcudnn.so.9 does not load".to_string())
    };
    let nccl = if unsafe { cudarc::nccl::sys::is_culib_present() } {
        let mut v = 0i32;
        match unsafe { cudarc::nccl::sys::ncclGetVersion(&mut v) } {
            cudarc::nccl::sys::ncclResult_t::ncclSuccess => Ok(v.to_string()),
            e => Err(format!("ncclGetVersion: {e:?}")),
        }
    } else {
        Err("libnccl.so does not load (only needed for several GPUs)".to_string())
    };
    vec![("cuDNN", cudnn), ("NCCL", nccl)]
}
