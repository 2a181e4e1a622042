//! Rewards of GRPO, as docs/method.md section 5 gives them. Every part is returned on its own so the
//! stage can log it.
//!
//! Two answer formats exist. The device's next-item decoding (`navigen::engine::predict`, trained by
//! sft's cid2cid task) continues the history with the three code tokens of the next CID directly: no
//! think block and no JSON, and the trie makes every answer an existing CID. For that format the
//! text checks have nothing to check (gate = pen = fmt = 1) and R = 0.9 cid + 0.1. The chat format
//! (think block, then one JSON object) goes through [`text_checks`], which implements the gate, the
//! penalties and the format reward of the method; cid2ins rollouts and text cid2cid answers use it.

use navigen::Cid;

/// Hierarchical CID credit: min(1, 0.5 [a] + 0.3 [b] + 0.2 [c]), each level compared on its own; a
/// predicted CID that exists but misses on every level earns 0.15.
pub fn cid_score(predicted: &Cid, target: &Cid, exists: bool) -> f32 {
    const WEIGHTS: [f32; 3] = [0.5, 0.3, 0.2];
    let s: f32 = predicted
        .codes()
        .iter()
        .zip(target.codes())
        .zip(WEIGHTS)
        .filter(|((p, t), _)| p == t)
        .map(|(_, w)| w)
        .sum();
    if s == 0.0 && exists {
        0.15
    } else {
        s.min(1.0)
    }
}

/// What the text checks found in one chat-format answer.
#[derive(Clone, Debug, PartialEq)]
pub struct TextChecks {
    /// A think block with more than 10 non-space characters.
    pub think_ok: bool,
    /// Sum of the violations' weights, capped at 1.
    pub violations: f32,
    /// Exactly one JSON object and no violation (the task adds its own content condition).
    pub one_clean_json: bool,
    /// The JSON object, when there is exactly one.
    pub json: Option<serde_json::Value>,
}

impl TextChecks {
    /// gate = 0.2 + 0.8 think_ok.
    pub fn gate(&self) -> f32 {
        0.2 + 0.8 * self.think_ok as u8 as f32
    }
    /// pen = 0.3 + 0.7 max(0, 1 - P).
    pub fn pen(&self) -> f32 {
        0.3 + 0.7 * (1.0 - self.violations).max(0.0)
    }
}

/// The JSON objects at the top level of `s`, with their byte spans (strings and escapes respected).
fn json_objects(s: &str) -> Vec<(usize, usize)> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let (mut depth, mut start, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for (i, &c) in b.iter().enumerate() {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' if depth > 0 => in_str = true,
            b'{' => {
                if depth == 0 {
                    start = i;
                }
                depth += 1;
            }
            b'}' if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    out.push((start, i + 1));
                }
            }
            _ => {}
        }
    }
    out
}

/// The method's checks of a chat-format answer: `<think>..</think>` first, then exactly one JSON
/// object. Violations: unbalanced think tags 0.35, several think blocks 0.2, think not at the start
/// 0.1, text before the JSON 0.2, text after it 0.45, several JSON objects 0.2, repeated answer keys
/// min(0.3, 0.1 n).
pub fn text_checks(text: &str) -> TextChecks {
    use navigen::prompt::{THINK_END, THINK_START};
    let opens = text.matches(THINK_START).count();
    let closes = text.matches(THINK_END).count();
    let mut p = 0f32;
    if opens != closes {
        p += 0.35;
    }
    if opens > 1 || closes > 1 {
        p += 0.2;
    }
    let trimmed = text.trim_start();
    if opens > 0 && !trimmed.starts_with(THINK_START) {
        p += 0.1;
    }
    let think_ok = match (text.find(THINK_START), text.find(THINK_END)) {
        (Some(a), Some(b)) if b > a => {
            text[a + THINK_START.len()..b]
                .chars()
                .filter(|c| !c.is_whitespace())
                .count()
                > 10
        }
        _ => false,
    };
    // The answer part: after the last think close (or everything without one).
    let answer = match text.rfind(THINK_END) {
        Some(e) => &text[e + THINK_END.len()..],
        None => text,
    };
    let objs = json_objects(answer);
    let mut json = None;
    if let (Some(&(a, _)), Some(&(_, z))) = (objs.first(), objs.last()) {
        if !answer[..a].trim().is_empty() {
            p += 0.2;
        }
        if !answer[z..].trim().is_empty() {
            p += 0.45;
        }
        if objs.len() > 1 {
            p += 0.2;
        }
        let (a, z) = objs[0];
        // Repeated keys: serde keeps the last; count them on the raw text of the object.
        let raw = &answer[a..z];
        json = serde_json::from_str::<serde_json::Value>(raw).ok();
        if let Some(serde_json::Value::Object(m)) = &json {
            let repeats: usize = m
                .keys()
                .map(|k| raw.matches(&format!("\"{k}\"")).count().saturating_sub(1))
                .sum();
            p += (0.1 * repeats as f32).min(0.3);
        }
    }
    let p = p.min(1.0);
    TextChecks {
        think_ok,
        violations: p,
        one_clean_json: objs.len() == 1 && p == 0.0 && json.is_some(),
        json: if objs.len() == 1 { json } else { None },
    }
}

/// R = (0.9 score gate + 0.1 fmt) pen.
pub fn combine(score: f32, gate: f32, fmt: bool, pen: f32) -> f32 {
    (0.9 * score * gate + 0.1 * fmt as u8 as f32) * pen
}

/// One next-item completion's reward in the device's code format, with its parts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CidReward {
    pub cid: f32,
    pub total: f32,
}

/// The device's code format: every rollout is an existing CID (the trie), there is no think block or
/// JSON, so gate = pen = fmt = 1.
pub fn cid2cid_codes(predicted: &Cid, target: &Cid) -> CidReward {
    let cid = cid_score(predicted, target, true);
    CidReward {
        cid,
        total: combine(cid, 1.0, true, 1.0),
    }
}

/// cid2ins: S is the mean of the judge's quality and the three embedding similarities (instruction
/// vs target TID, instruction vs predicted TID, predicted TID vs target TID), `s_parts` in that order
/// (without a judge, the three similarities); fmt needs a non-empty TID and instruction besides the
/// clean single JSON object.
pub fn cid2ins(checks: &TextChecks, s_parts: &[f32]) -> f32 {
    let s = s_parts.iter().sum::<f32>() / s_parts.len().max(1) as f32;
    combine(s, checks.gate(), cid2ins_format(checks), checks.pen())
}

/// cid2ins's format reward: one clean JSON object with a non-empty TID and instruction.
pub fn cid2ins_format(checks: &TextChecks) -> bool {
    let content = checks.json.as_ref().is_some_and(|j| {
        let tid = j
            .get("target_tid")
            .and_then(|t| t.as_array())
            .is_some_and(|a| !a.is_empty());
        let ins = j
            .get("target_ins")
            .and_then(|t| t.as_str())
            .is_some_and(|s| !s.trim().is_empty());
        tid && ins
    });
    checks.one_clean_json && content
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cid(a: u16, b: u16, c: u16) -> Cid {
        Cid::new(&[a, b, c]).unwrap()
    }

    #[test]
    fn hierarchical_cid_credit() {
        let t = cid(1, 2, 3);
        assert_eq!(cid_score(&cid(1, 2, 3), &t, true), 1.0);
        assert!((cid_score(&cid(1, 2, 9), &t, true) - 0.8).abs() < 1e-6);
        assert!((cid_score(&cid(1, 9, 9), &t, true) - 0.5).abs() < 1e-6);
        // Each level on its own: b and c right, a wrong.
        assert!((cid_score(&cid(9, 2, 3), &t, true) - 0.5).abs() < 1e-6);
        assert!((cid_score(&cid(9, 9, 9), &t, true) - 0.15).abs() < 1e-6);
        assert_eq!(cid_score(&cid(9, 9, 9), &t, false), 0.0);
        let r = cid2cid_codes(&cid(1, 2, 3), &t);
        assert!((r.total - 1.0).abs() < 1e-6);
        let r = cid2cid_codes(&cid(9, 9, 9), &t);
        assert!((r.total - (0.9 * 0.15 + 0.1)).abs() < 1e-6);
    }

    #[test]
    fn text_checks_follow_the_method() {
        let good = "<think>\nThey watched three heist films lately.\n</think>\n\n{\"target_tid\":[\"heist\"],\"target_ins\":\"A vault at night\"}";
        let c = text_checks(good);
        assert!(c.think_ok && c.one_clean_json, "{c:?}");
        assert_eq!(c.violations, 0.0);
        assert_eq!((c.gate(), c.pen()), (1.0, 1.0));
        assert!((cid2ins(&c, &[1.0; 4]) - 1.0).abs() < 1e-6);

        // Text after the JSON (0.45) and before it (0.2).
        let c = text_checks("<think>long enough reasoning here</think> ok {\"a\":1} trailing");
        assert!((c.violations - 0.65).abs() < 1e-6, "{c:?}");
        assert!(!c.one_clean_json);
        assert!((c.pen() - (0.3 + 0.7 * 0.35)).abs() < 1e-6);

        // A short think block opens no gate; no think at all neither.
        assert!(!text_checks("<think>short</think>{\"a\":1}").think_ok);
        let c = text_checks("{\"a\":1}");
        assert!(!c.think_ok && c.one_clean_json);
        assert!((c.gate() - 0.2).abs() < 1e-6);

        // Unbalanced tags 0.35 (an unclosed think also leaves text before the JSON, 0.2); several
        // think blocks 0.2; think not first 0.1.
        assert!((text_checks("<think>abc {\"a\":1}").violations - 0.55).abs() < 1e-6);
        let c = text_checks("<think>aaaaaaaaaaaa</think><think>b</think>{\"a\":1}");
        assert!((c.violations - 0.2).abs() < 1e-6, "{c:?}");
        let c = text_checks("x <think>aaaaaaaaaaaa</think>{\"a\":1}");
        assert!((c.violations - 0.1).abs() < 1e-6, "{c:?}");

        // Several JSON objects 0.2 (text before and after means outside all of them); repeated
        // keys 0.1 each.
        let c = text_checks("{\"a\":1}{\"b\":2}");
        assert!((c.violations - 0.2).abs() < 1e-6, "{c:?}");
        assert!(c.json.is_none());
        let c = text_checks("{\"a\":1,\"a\":2,\"a\":3}");
        assert!((c.violations - 0.2).abs() < 1e-6, "{c:?}");
        // Braces inside strings are text, not objects.
        let c = text_checks("{\"a\":\"}{\"}");
        assert!(c.one_clean_json, "{c:?}");
        // The cap at 1: pen never falls below 0.3.
        let c = text_checks("a <think>x<think> {\"k\":1,\"k\":1,\"k\":1,\"k\":1} {\"b\":1} z");
        assert_eq!(c.violations, 1.0);
        assert!((c.pen() - 0.3).abs() < 1e-6);

        // cid2ins: an empty instruction fails the format reward only.
        let c = text_checks(
            "<think>long enough reasoning</think>{\"target_tid\":[\"a\"],\"target_ins\":\" \"}",
        );
        assert!((cid2ins(&c, &[1.0; 4]) - 0.9).abs() < 1e-6);
    }
}
