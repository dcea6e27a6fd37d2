//! CPU time of other processes (the nodes under test), from
//! `/proc/<pid>/stat`: user + system time, sampled at the start and the end
//! of the measured window (`--server-pids`).

use serde::Serialize;

/// A process to watch: a name for the report (e.g. the node's address) and its pid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
}

impl std::str::FromStr for Watched {
    type Err = String;

    /// `NAME=PID` or just `PID`.
    fn from_str(s: &str) -> Result<Watched, String> {
        let (name, pid) = match s.rsplit_once('=') {
            Some((name, pid)) => (name.to_string(), pid),
            None => (s.to_string(), s),
        };
        let pid = pid.trim().parse::<u32>().map_err(|_| format!("not a pid: {s:?} (NAME=PID or PID)"))?;
        Ok(Watched { name, pid })
    }
}

/// User + system CPU seconds of `pid` so far (`None` when it is gone).
pub fn cpu_seconds_of(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text).map(|ticks| ticks as f64 / clock_ticks())
}

/// utime + stime (clock ticks) of a `/proc/<pid>/stat` line. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted
/// after its last `)`: state is field 3, utime 14, stime 15.
fn parse_stat(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU of one watched process over the measured window.
#[derive(Serialize, Debug, Clone)]
pub struct ProcessCpu {
    pub name: String,
    pub pid: u32,
    pub cpu_seconds: f64,
    /// `cpu_seconds` per successful operation of the window, in µs.
    pub us_per_op: f64,
}

/// CPU of every watched process (the nodes), kept apart from the load
/// generator's own (`client_cpu_seconds`).
#[derive(Serialize, Debug, Clone)]
pub struct ServerCpu {
    pub processes: Vec<ProcessCpu>,
    pub cpu_seconds: f64,
    /// Successful operations of the measured window the CPU is divided by.
    pub ops: u64,
    /// All watched processes' CPU per successful operation, in µs.
    pub us_per_op: f64,
    /// Their CPU as a share of all cores' time in the window.
    pub share: f64,
}

/// Samples every watched process now.
pub fn sample(watched: &[Watched]) -> Vec<Option<f64>> {
    watched.iter().map(|w| cpu_seconds_of(w.pid)).collect()
}

pub fn server_cpu(watched: &[Watched], before: &[Option<f64>], after: &[Option<f64>], ops: u64, seconds: f64) -> ServerCpu {
    let per_op = |cpu: f64| if ops > 0 { cpu / ops as f64 * 1e6 } else { 0.0 };
    let processes: Vec<ProcessCpu> = watched
        .iter()
        .zip(before.iter().zip(after))
        .map(|(w, (b, a))| {
            let cpu = match (b, a) {
                (Some(b), Some(a)) => (a - b).max(0.0),
                _ => 0.0,
            };
            ProcessCpu { name: w.name.clone(), pid: w.pid, cpu_seconds: cpu, us_per_op: per_op(cpu) }
        })
        .collect();
    let cpu_seconds: f64 = processes.iter().map(|p| p.cpu_seconds).sum();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    ServerCpu {
        processes,
        cpu_seconds,
        ops,
        us_per_op: per_op(cpu_seconds),
        share: if seconds > 0.0 { cpu_seconds / (seconds * cores) } else { 0.0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utime_and_stime_after_the_name() {
        let line = "1234 (causal kv) (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 100 0 0\n";
        assert_eq!(parse_stat(line), Some(300));
    }

    #[test]
    fn own_process_has_cpu() {
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_seconds_of(std::process::id()).is_some());
        assert_eq!("a:1=42".parse::<Watched>(), Ok(Watched { name: "a:1".into(), pid: 42 }));
        assert!("a=b".parse::<Watched>().is_err());
    }
}
