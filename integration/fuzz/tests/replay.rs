//! Every fuzz target on its seed corpus, on every regression input (a
//! crash found once; `regressions/<target>/<name>`), and on a short seeded
//! run of mutations of the corpus: the fuzzing that runs with every test
//! run. The long coverage-guided runs are `integration/fuzz/afl`.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};

use ferry_fuzz::TARGETS;

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn here() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

#[test]
fn every_target_has_a_seed_corpus() {
    for (name, _) in TARGETS {
        assert!(
            !files(&here().join("corpus").join(name)).is_empty(),
            "no seeds for {name} (integration/fuzz/seed)"
        );
    }
}

#[test]
fn corpora_and_regressions_run_clean() {
    for (name, f) in TARGETS {
        for dir in ["corpus", "regressions"] {
            for p in files(&here().join(dir).join(name)) {
                let data = std::fs::read(&p).unwrap();
                eprintln!("{name}: {}", p.display());
                f(&data);
            }
        }
    }
}

/// xorshift64*: a fixed, seeded sequence, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutation of the kinds AFL's havoc stage makes.
fn mutate(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8]) {
    const INTERESTING: [u8; 8] = [0, 1, 0x7f, 0x80, 0xff, b'\n', b'=', b'"'];
    match rng.below(7) {
        0 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] ^= 1 << rng.below(8);
        }
        1 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] = INTERESTING[rng.below(INTERESTING.len())];
        }
        2 if !data.is_empty() => {
            let i = rng.below(data.len());
            let n = rng.below(data.len() - i).min(64);
            data.drain(i..i + n);
        }
        3 => {
            let i = rng.below(data.len() + 1);
            let b = INTERESTING[rng.below(INTERESTING.len())];
            data.splice(i..i, std::iter::repeat_n(b, 1 + rng.below(16)));
        }
        4 if !data.is_empty() => {
            let i = rng.below(data.len());
            let n = rng.below(data.len() - i).min(64);
            let chunk = data[i..i + n].to_vec();
            let j = rng.below(data.len() + 1);
            data.splice(j..j, chunk);
        }
        5 if !other.is_empty() => {
            let i = rng.below(data.len() + 1);
            let j = rng.below(other.len());
            data.truncate(i);
            data.extend_from_slice(&other[j..]);
        }
        _ => {
            let keep = rng.below(data.len() + 1);
            data.truncate(keep);
        }
    }
}

#[test]
fn seeded_mutations_of_the_corpora_run_clean() {
    let rounds: usize = std::env::var("FERRY_FUZZ_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    for (i, (name, f)) in TARGETS.iter().enumerate() {
        let seeds: Vec<Vec<u8>> = files(&here().join("corpus").join(name))
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1));
        for round in 0..rounds {
            let seed = &seeds[round % seeds.len()];
            let other = &seeds[rng.below(seeds.len())];
            let mut data = seed.clone();
            for _ in 0..1 + rng.below(8) {
                mutate(&mut rng, &mut data, other);
            }
            f(&data);
        }
    }
}
