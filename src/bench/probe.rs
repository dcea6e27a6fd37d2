//! Disk probe: latency of a small append followed by fdatasync(2).

use std::io::Write as _;
use std::time::Instant;

use serde::Serialize;

use super::stats::{Latency, histogram};

#[derive(Serialize, Debug)]
pub struct FsyncReport {
    pub tool: &'static str,
    pub mode: &'static str,
    pub dir: String,
    pub block_bytes: usize,
    #[serde(flatten)]
    pub latency: Latency,
}

pub fn fsync_probe(dir: &std::path::Path, count: usize, block: usize) -> std::io::Result<FsyncReport> {
    let path = dir.join(format!(".causalkv-bench-fsync-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new().create(true).truncate(true).write(true).open(&path)?;
    let data = vec![0x5au8; block];
    let mut hist = histogram();
    for _ in 0..count {
        let t0 = Instant::now();
        file.write_all(&data)?;
        file.sync_data()?;
        hist.saturating_record((t0.elapsed().as_micros() as u64).max(1));
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(FsyncReport {
        tool: "causalkv-bench",
        mode: "fsync-probe",
        dir: dir.display().to_string(),
        block_bytes: block,
        latency: Latency::of(&hist),
    })
}
