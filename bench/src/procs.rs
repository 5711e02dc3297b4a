//! Resource use of the stack's processes, from /proc: memory (PSS) and CPU time of each
//! component, its children included (a PostgreSQL server is a postmaster and backends).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// Per component: (PSS bytes, CPU ticks so far).
pub struct Sample {
    at: Instant,
    usage: BTreeMap<String, (u64, u64)>,
}

/// What a process is, from its command line; `None` for the rest of the machine.
fn component(cmdline: &str, comm: &str) -> Option<String> {
    // comm is cut to 15 characters: paystream-webho(ok), paystream-recon(ciler).
    let name = match comm {
        "paystream-api" | "stripe-sim" | "tansu" | "nginx" => comm,
        c if c.starts_with("paystream-webho") => "paystream-webhook",
        c if c.starts_with("paystream-recon") => "paystream-reconciler",
        "java" if cmdline.contains("ConnectStandalone") => "kafka-connect",
        // This process: the load generator, reported apart from the pipeline it loads.
        "paystream-bench" => "load generator",
        "prometheus" => "prometheus",
        c if c.starts_with("prometheus-ale") => "alertmanager",
        "paystream" if cmdline.contains(" exporter") => "exporter",
        "postgres" if cmdline.contains(" -D ") => {
            let dir = cmdline.split(" -D ").nth(1)?.split_whitespace().next()?;
            return Some(format!("postgres {}", dir.rsplit('/').next()?));
        }
        _ => return None,
    };
    Some(name.to_owned())
}

/// Proportional set size in pages: shared memory (PostgreSQL's buffers) split among the
/// processes that map it, so a server's backends add up to the server's real footprint.
fn pss_pages(pid_dir: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(pid_dir.join("smaps_rollup")).ok()?;
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 4)
}

pub fn sample() -> Sample {
    // pid -> (ppid, rss pages, ticks, component)
    let mut procs: HashMap<u32, (u32, u64, u64, Option<String>)> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // comm is in parentheses and may hold spaces: split after the last ')'.
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let comm = head.split_once(" (").map_or("", |(_, c)| c);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        // After ')': state(0) ppid(1) ... utime(11) stime(12) ... rss(21)
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        procs.insert(
            pid,
            (
                u32::try_from(num(1)).unwrap_or(0),
                pss_pages(&entry.path()).unwrap_or_else(|| num(21)),
                num(11) + num(12),
                component(&cmdline, comm),
            ),
        );
    }
    let mut usage: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (&pid, (_, rss, ticks, _)) in &procs {
        // The nearest ancestor (or itself) that is a component owns the process.
        let mut p = pid;
        let owner = loop {
            match procs.get(&p) {
                Some((_, _, _, Some(c))) => break Some(c.clone()),
                Some((ppid, _, _, None)) if *ppid > 1 => p = *ppid,
                _ => break None,
            }
        };
        if let Some(c) = owner {
            let e = usage.entry(c).or_default();
            e.0 += rss * 4096;
            e.1 += ticks;
        }
    }
    Sample {
        at: Instant::now(),
        usage,
    }
}

/// Per component: RSS at the end (MB) and CPU used between the samples (% of one core).
pub fn between(a: &Sample, b: &Sample) -> Vec<(String, f64, f64)> {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(0.001);
    b.usage
        .iter()
        .map(|(name, &(rss, ticks))| {
            let before = a.usage.get(name).map_or(ticks, |u| u.1);
            let cpu = ticks.saturating_sub(before) as f64 / 100.0 / secs * 100.0;
            (name.clone(), rss as f64 / 1e6, cpu)
        })
        .collect()
}
