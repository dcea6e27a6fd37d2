//! The layout rule of DESIGN.md: the protocol core knows nothing of HTTP —
//! no file under the core's folders imports `api` (only `server` and `api`
//! itself may).

use std::path::Path;

const CORE: [&str; 8] = ["src/node", "src/viewchange", "src/gossip", "src/store", "src/causal", "src/shard", "src/sim", "src/check.rs"];

fn rust_files(path: &Path, out: &mut Vec<std::path::PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("readable source folder").flatten() {
            rust_files(&entry.path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

#[test]
fn nothing_in_the_core_imports_the_http_adapter() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in CORE {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 30, "the core's files were not found: {files:?}");
    let mut offenders = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable source");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains("crate::api") || code.contains("super::api") || code.trim_start().starts_with("use api") {
                offenders.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(offenders.is_empty(), "the core imports api:\n{}", offenders.join("\n"));
}
