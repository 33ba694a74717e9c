//! Wildcard matching in linear-times-pattern time.
//!
//! The obvious recursive matcher backtracks exponentially on patterns such
//! as `*a*a*a*a*a*a*a*b` (every `*` retries every split). Every pattern
//! language ferry reads (TUF path patterns, git signer scopes, device
//! selectors) has stars that match any run of elements and other tokens
//! that match exactly one element; for those, returning to the most recent
//! star only is complete, so the match costs O(pattern × text).

/// Matches `text` against `pat`: `is_star(p)` tokens match any run of
/// elements (also none), every other token exactly one element for which
/// `one(p, t)` holds.
pub fn wildmatch<P, T>(
    pat: &[P],
    text: &[T],
    is_star: impl Fn(&P) -> bool,
    one: impl Fn(&P, &T) -> bool,
) -> bool {
    let (mut pi, mut ti) = (0, 0);
    // The last star seen, and the text position its run currently ends at.
    let mut star: Option<(usize, usize)> = None;
    while ti < text.len() {
        if pi < pat.len() && is_star(&pat[pi]) {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < pat.len() && one(&pat[pi], &text[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            // Let the last star take one more element and retry after it.
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pat[pi..].iter().all(is_star)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        let (p, t): (Vec<char>, Vec<char>) = (p.chars().collect(), t.chars().collect());
        wildmatch(&p, &t, |c| *c == '*', |p, t| *p == '?' || p == t)
    }

    #[test]
    fn stars_and_single_elements() {
        for (p, t, want) in [
            ("", "", true),
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("*c", "abcbc", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("**a", "bba", true),
            ("*ab", "aab", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(m(p, t), want, "{p} vs {t}");
        }
    }

    /// Regression: `*a*a*a*a*a*a*a*b` against a long run of `a`s took
    /// exponential time in the recursive matchers this replaces.
    #[test]
    fn pathological_patterns_are_linear() {
        let text = "a".repeat(10_000);
        assert!(!m("*a*a*a*a*a*a*a*a*a*a*a*a*b", &text));
        assert!(m("*a*a*a*a*a*a*a*a*a*a*a*a*", &text));
    }
}
