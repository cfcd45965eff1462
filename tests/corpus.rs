//! Accuracy of the classifier on a labelled corpus of real user agents
//! (tests/data/ua_corpus.tsv, every row citing its public source).
//!
//! Prints precision and recall per verdict; fails if accuracy on the rows
//! whose user agent carries the signal drops below 97%, or if any human
//! mail client or browser is called a scanner or a bot.

use std::collections::BTreeMap;

use waymark::classify::{Classifier, Settings, Verdict};
use waymark::token::Kind;

struct Row {
    truth: Verdict,
    signal: bool,
    ua: String,
    source: String,
}

fn corpus() -> Vec<Row> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/ua_corpus.tsv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("verdict\tua_signal\tuser_agent\tsource"));
    lines
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            let cols: Vec<&str> = l.split('\t').collect();
            assert_eq!(cols.len(), 4, "row {}: {l:?}", i + 2);
            assert!(!cols[3].trim().is_empty(), "row {} cites no source", i + 2);
            Row {
                truth: Verdict::parse(cols[0])
                    .unwrap_or_else(|| panic!("row {}: verdict {:?}", i + 2, cols[0])),
                signal: match cols[1] {
                    "yes" => true,
                    "no" => false,
                    other => panic!("row {}: ua_signal {other:?}", i + 2),
                },
                ua: cols[2].to_owned(),
                source: cols[3].to_owned(),
            }
        })
        .collect()
}

#[test]
fn classifier_accuracy_on_the_labelled_corpus() {
    let rows = corpus();
    assert!(rows.len() >= 100, "the corpus has only {} rows", rows.len());
    let mut classifier = Classifier::new(&Settings::default()).unwrap();

    // confusion[truth][predicted]
    let mut confusion: BTreeMap<Verdict, BTreeMap<Verdict, usize>> = BTreeMap::new();
    let mut wrong = Vec::new();
    let mut humans_as_machines = Vec::new();
    let (mut signal_rows, mut signal_right) = (0, 0);
    for row in &rows {
        let got = classifier.assess(Kind::Open, None, Some(&row.ua)).verdict;
        *confusion.entry(row.truth).or_default().entry(got).or_default() += 1;
        if row.signal {
            signal_rows += 1;
            if got == row.truth {
                signal_right += 1;
            }
        }
        if got != row.truth {
            wrong.push(format!("  {:?} as {:?}: {} ({})", row.truth, got, row.ua, row.source));
        }
        if row.truth == Verdict::Human && matches!(got, Verdict::Scanner | Verdict::Bot) {
            humans_as_machines.push(row.ua.clone());
        }
    }

    println!("corpus: {} rows, {} with the signal in the user agent", rows.len(), signal_rows);
    println!("{:<8} {:>5} {:>9} {:>7}", "verdict", "rows", "precision", "recall");
    for v in Verdict::ALL {
        let truth_total: usize = confusion.get(&v).map(|m| m.values().sum()).unwrap_or(0);
        let predicted_total: usize = confusion.values().map(|m| m.get(&v).copied().unwrap_or(0)).sum();
        let right = confusion.get(&v).and_then(|m| m.get(&v)).copied().unwrap_or(0);
        let pct = |a: usize, b: usize| {
            if b == 0 { "-".to_owned() } else { format!("{:.1}%", 100.0 * a as f64 / b as f64) }
        };
        println!(
            "{:<8} {:>5} {:>9} {:>7}",
            v.as_str(),
            truth_total,
            pct(right, predicted_total),
            pct(right, truth_total)
        );
    }
    let accuracy = 100.0 * signal_right as f64 / signal_rows as f64;
    println!(
        "accuracy on rows whose user agent carries the signal: {accuracy:.1}% ({signal_right}/{signal_rows})"
    );
    if !wrong.is_empty() {
        println!("misclassified:\n{}", wrong.join("\n"));
    }
    assert!(humans_as_machines.is_empty(), "human clients called scanner or bot: {humans_as_machines:#?}");
    assert!(accuracy >= 97.0, "accuracy {accuracy:.1}% is below 97%");
}
