//! The classifier: turns a [`Hit`] into a [`Judgement`] (a verdict, whether
//! it counts, and the reasons for both).
//!
//! It must never block or fail: whatever it cannot tell, it leaves to the
//! default verdict, `human`, and says which signals fired.

use std::borrow::Cow;

use serde::Serialize;

use crate::hit::{Hit, Method};

/// Who was behind a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Human,
    Proxy,
    Scanner,
    Bot,
}

/// A short machine-readable code for a signal that fired: `head`,
/// `ua:proofpoint`, `net:microsoft`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Reason(Cow<'static, str>);

impl Reason {
    pub const HEAD: Reason = Reason(Cow::Borrowed("head"));

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    pub verdict: Verdict,
    pub counted: bool,
    pub reasons: Vec<Reason>,
}

#[derive(Debug, Default)]
pub struct Classifier {}

impl Classifier {
    pub fn judge(&mut self, hit: &Hit) -> Judgement {
        let mut reasons = Vec::new();
        // A HEAD fetches no image and follows no link: only machines send it.
        if hit.method == Method::Head {
            reasons.push(Reason::HEAD);
        }
        let counted = reasons.is_empty();
        Judgement { verdict: Verdict::Human, counted, reasons }
    }
}
