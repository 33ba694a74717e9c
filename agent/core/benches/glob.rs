//! Glob matching on adversarial patterns: time per text element stays flat
//! as the text grows (linear time), where a backtracking matcher's time
//! explodes with the number of stars.
//!
//!     cargo bench -p ferry-core --bench glob
//!
//! Prints one row per dialect and text length, and the ratio of the time
//! per element at the longest text to the shortest (1.0 = linear).

use std::hint::black_box;
use std::time::{Duration, Instant};

use ferry_core::glob;

/// The median time of `f` over enough runs to take ~200 ms.
fn time(mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    let mut runs = 0u32;
    while start.elapsed() < Duration::from_millis(50) || runs < 3 {
        black_box(f());
        runs += 1;
    }
    let mut samples: Vec<Duration> = (0..15)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..runs.div_ceil(10).max(1) {
                black_box(f());
            }
            t.elapsed() / runs.div_ceil(10).max(1)
        })
        .collect();
    samples.sort();
    samples[samples.len() / 2]
}

/// The recursive matcher ferry's globs replaced (for contrast).
fn backtracking(p: &[u8], t: &[u8]) -> bool {
    match (p.first(), t.first()) {
        (None, None) => true,
        (Some(b'*'), _) => backtracking(&p[1..], t) || (!t.is_empty() && backtracking(p, &t[1..])),
        (Some(a), Some(b)) if a == b || *a == b'?' => backtracking(&p[1..], &t[1..]),
        _ => false,
    }
}

fn main() {
    let stars = "*a".repeat(12) + "*b";
    let lengths = [1_000usize, 10_000, 100_000];
    println!(
        "{:<10} {:>8} {:>12} {:>12}",
        "dialect", "text", "time", "ns/element"
    );
    type Case<'a> = (
        &'static str,
        Box<dyn Fn(usize) -> (String, String) + 'a>,
        fn(&str, &str) -> bool,
    );
    let cases: Vec<Case> = vec![
        (
            "selector",
            Box::new(|n| (stars.clone(), "a".repeat(n))),
            glob::selector,
        ),
        (
            "scope",
            Box::new(|n| ("**/a/".repeat(12) + "**/b", vec!["a"; n / 2].join("/"))),
            glob::scope,
        ),
        (
            "tuf",
            Box::new(|n| (stars.replace('b', "[!a]"), "a".repeat(n))),
            glob::tuf_path,
        ),
    ];
    for (name, make, matcher) in &cases {
        let mut per = Vec::new();
        for &n in &lengths {
            let (p, t) = make(n);
            let d = time(|| matcher(&p, &t));
            assert!(
                !matcher(&p, &t),
                "{name}: the adversarial case must not match"
            );
            let ns = d.as_nanos() as f64 / n as f64;
            per.push(ns);
            println!("{name:<10} {n:>8} {:>12.3?} {ns:>12.2}", d);
        }
        println!(
            "{name:<10} ratio ns/element at {} vs {}: {:.2} (1.0 = linear)",
            lengths[lengths.len() - 1],
            lengths[0],
            per[per.len() - 1] / per[0]
        );
    }
    // The backtracking matcher on the same selector pattern: each few more
    // characters multiply the time.
    println!("backtracking matcher, pattern {stars}:");
    for n in [14usize, 16, 18, 20] {
        let t = "a".repeat(n);
        let d = time(|| backtracking(stars.as_bytes(), t.as_bytes()));
        println!("{:<10} {n:>8} {:>12.3?}", "recursive", d);
    }
}
