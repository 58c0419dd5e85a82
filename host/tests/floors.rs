//! The floors of `host/src`, lowest first: a module uses only its own floor and those below,
//! so the layers read bottom-up (kernels → CPU drivers → backends → networks → BYOL and
//! evaluation → the run).

use std::path::Path;

/// `(module, floor)`; modules not listed (the run: config, train, ablate, recipe, checkpoint,
/// embed, plot, main) sit on top and may use anything.
const FLOORS: [(&str, usize); 9] = [
    ("error", 0),
    ("files", 0),
    ("cpu", 1),
    ("data", 1),
    ("dist", 1),
    ("backend", 2),
    ("nn", 3),
    ("byol", 4),
    ("eval", 4),
];

fn floor(module: &str) -> Option<usize> {
    FLOORS.iter().find(|(m, _)| *m == module).map(|(_, f)| *f)
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_should_use_one_on_a_floor_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for (module, own) in FLOORS {
        let (dir, file) = (src.join(module), src.join(format!("{module}.rs")));
        let mut sources = Vec::new();
        if dir.is_dir() {
            files(&dir, &mut sources);
        }
        if file.is_file() {
            sources.push(file);
        }
        assert!(!sources.is_empty(), "no sources for {module}");
        for path in sources {
            let text = std::fs::read_to_string(&path).unwrap();
            for line in text
                .lines()
                .filter(|l| l.trim_start().starts_with("use crate::"))
            {
                let used = line.trim_start()["use crate::".len()..].to_string();
                let target = used.split("::").next().unwrap().trim_end_matches(';');
                if floor(target).is_some_and(|f| f > own) {
                    violations.push(format!("{}: {}", path.display(), line.trim()));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports up a floor:\n{}",
        violations.join("\n")
    );
}

/// The networks, the step and the evaluation reach the kernels only through the backend
/// trait, so the same code trains on every backend: not even a path names the CPU drivers.
#[test]
fn networks_step_and_evaluation_should_reach_kernels_only_through_the_backend() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for module in ["byol", "nn", "eval"] {
        let mut sources = Vec::new();
        files(&src.join(module), &mut sources);
        for path in sources {
            let text = std::fs::read_to_string(&path).unwrap();
            for (i, line) in text.lines().enumerate() {
                if line.contains("crate::cpu") || line.contains("kernels::") {
                    violations.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "direct uses of the CPU drivers or kernels:\n{}",
        violations.join("\n")
    );
}
