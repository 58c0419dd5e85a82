//! The tests' scratch folders (`tests/common/scratch.rs`): gone after a test that passes, kept
//! after one that fails.

#[path = "common/scratch.rs"]
mod scratch;

use scratch::Scratch;

fn fill(s: &Scratch) {
    std::fs::create_dir_all(s.join("run")).unwrap();
    std::fs::write(s.join("run/metrics.jsonl"), "{}\n").unwrap();
}

#[test]
fn a_scratch_folder_should_be_removed_when_its_test_passes() {
    let path = {
        let s = Scratch::new("folders", "passed");
        fill(&s);
        s.to_path_buf()
    };
    assert!(!path.exists(), "{} was left behind", path.display());
    // A scratch path used as a file goes too.
    let file = {
        let s = Scratch::new("folders", "file");
        std::fs::write(&s, "x").unwrap();
        s.to_path_buf()
    };
    assert!(!file.exists(), "{} was left behind", file.display());
}

#[test]
fn a_scratch_folder_should_be_kept_when_its_test_fails() {
    let path = Scratch::new("folders", "failed").to_path_buf();
    let failed = std::panic::catch_unwind(|| {
        let s = Scratch::new("folders", "failed");
        fill(&s);
        panic!("the test's assertion fails");
    });
    assert!(failed.is_err());
    assert!(path.join("run/metrics.jsonl").is_file(), "kept to be read");
    // A new test of the same name in the same process starts from an empty path.
    let again = Scratch::new("folders", "failed");
    assert!(!again.exists());
}
