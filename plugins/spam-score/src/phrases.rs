//! Every occurrence of a set of phrases in a text, ignoring the case of
//! ASCII letters, in a pass that skips most of the text: Horspool's
//! algorithm for a set of patterns. A window as long as the shortest phrase
//! slides along the text; the byte at its end says how far it may move
//! before a phrase could start in it. Only where that byte ends some
//! phrase's first window are the phrases compared.
//!
//! Why not the aho-corasick crate: its automaton reads every byte (about
//! 2 ns a byte in a wasm plugin, measured: 200 µs for a 100 KB text), and
//! the prefilters that let it skip need x86 or ARM SIMD. On text that
//! holds few of the phrases' letters this reads one byte in several.

/// The phrases, ready to search for.
#[derive(Debug)]
pub struct Phrases {
    /// In lower case (ASCII letters; others as given), by ID.
    patterns: Vec<Vec<u8>>,
    /// The length of the shortest non-empty phrase, at most 255; 0 if
    /// there is none.
    window: usize,
    /// By the byte at the end of the window (both cases of a letter): how
    /// far the window may move. 0 where some phrase's first window ends
    /// with it.
    shift: [u8; 256],
    /// By that byte, where its shift is 0: the phrases to compare.
    ends: Vec<Vec<usize>>,
}

impl Phrases {
    /// Prepares `patterns` (ID = position). An empty phrase occurs
    /// everywhere: it is reported once, at the start.
    pub fn new(patterns: &[String]) -> Self {
        let patterns: Vec<Vec<u8>> = patterns.iter().map(|p| p.to_ascii_lowercase().into_bytes()).collect();
        let shortest = patterns.iter().map(Vec::len).filter(|&n| n > 0).min().unwrap_or(0);
        let window = u8::try_from(shortest).unwrap_or(u8::MAX);
        let mut shift = [window; 256];
        let mut ends = vec![Vec::new(); 256];
        for (id, pattern) in patterns.iter().enumerate().filter(|(_, p)| !p.is_empty()) {
            for (distance, &byte) in (0..window).rev().zip(pattern) {
                for byte in [byte, byte.to_ascii_uppercase()] {
                    let slot = &mut shift[usize::from(byte)];
                    *slot = (*slot).min(distance);
                    if distance == 0 && !ends[usize::from(byte)].contains(&id) {
                        ends[usize::from(byte)].push(id);
                    }
                }
            }
        }
        let window = usize::from(window);
        Self {
            patterns,
            window,
            shift,
            ends,
        }
    }

    /// Calls `found(id, end)` for every occurrence of a phrase in `text`,
    /// overlapping ones included: empty phrases first, then by start.
    pub fn find(&self, text: &[u8], mut found: impl FnMut(usize, usize)) {
        for (id, _) in self.patterns.iter().enumerate().filter(|(_, p)| p.is_empty()) {
            found(id, 0);
        }
        if self.window == 0 {
            return;
        }
        let mut start = 0;
        while let Some(&last) = text.get(start + self.window - 1) {
            match self.shift[usize::from(last)] {
                0 => {
                    for &id in &self.ends[usize::from(last)] {
                        let pattern = &self.patterns[id];
                        let end = start + pattern.len();
                        if text.get(start..end).is_some_and(|t| t.eq_ignore_ascii_case(pattern)) {
                            found(id, end);
                        }
                    }
                    start += 1;
                }
                distance => start += usize::from(distance),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `find` must report: every (id, end), by a search at each
    /// position, sorted.
    fn naive(patterns: &[String], text: &str) -> Vec<(usize, usize)> {
        let text = text.to_ascii_lowercase().into_bytes();
        let mut all = Vec::new();
        for start in 0..=text.len() {
            for (id, p) in patterns.iter().enumerate() {
                let p = p.to_ascii_lowercase().into_bytes();
                if (p.is_empty() && start == 0) || (!p.is_empty() && text[start..].starts_with(&p)) {
                    all.push((id, start + p.len()));
                }
            }
        }
        all.sort();
        all
    }

    /// What `find` reports, sorted.
    fn found(phrases: &Phrases, text: &str) -> Vec<(usize, usize)> {
        let mut all = Vec::new();
        phrases.find(text.as_bytes(), |id, end| all.push((id, end)));
        all.sort();
        all
    }

    #[test]
    fn every_occurrence_is_found_as_by_a_search_at_each_position() {
        let sets: [&[&str]; 4] = [
            &["viagra", "act now", "now", "http://", "https://", "wire transfer"],
            &["aa", "aaa", "ab", "ba"],
            &["x", "", "xyz"],
            &["été", "gratuit", "é"],
        ];
        // Texts built from the phrases' own letters, so they overlap often.
        let mut seed = 0x2545_f491_u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for set in sets {
            let patterns: Vec<String> = set.iter().map(|p| (*p).to_owned()).collect();
            let phrases = Phrases::new(&patterns);
            let letters: Vec<char> = set.concat().chars().chain("AX Y".chars()).collect();
            for len in [0, 1, 2, 5, 9, 40, 200] {
                for _ in 0..50 {
                    let text: String = (0..len).map(|_| letters[next() as usize % letters.len()]).collect();
                    assert_eq!(found(&phrases, &text), naive(&patterns, &text), "{set:?} in {text:?}");
                }
            }
        }
    }

    #[test]
    fn case_of_ascii_letters_is_ignored() {
        let phrases = Phrases::new(&["click here".to_owned(), "HTTP://".to_owned()]);
        assert_eq!(found(&phrases, "CLICK HERE: Http://x"), [(0, 10), (1, 19)]);
        assert_eq!(found(&phrases, "click her"), []);
    }

    #[test]
    fn no_phrases_find_nothing() {
        assert_eq!(found(&Phrases::new(&[]), "anything"), []);
    }
}
