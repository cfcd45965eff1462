//! Labelled user-agent files under tests/data (ua_corpus.tsv, the corpus
//! the rules were tuned on, and ua_holdout.tsv, the held-out set they were
//! never written from): reading them, naming where a row comes from, and
//! the tallies the accuracy tests print. Holds no judgement of its own.

use waymark::classify::Verdict;

pub struct Row {
    pub truth: Verdict,
    pub signal: bool,
    pub ua: String,
    pub source: String,
}

/// The rows of `tests/data/{name}`, after its `#` header and column line.
pub fn load(name: &str) -> Vec<Row> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.starts_with('#') && !l.trim().is_empty());
    assert_eq!(lines.next().map(|(_, l)| l), Some("verdict\tua_signal\tuser_agent\tsource"), "{name}");
    lines
        .map(|(i, l)| {
            let n = i + 1;
            let cols: Vec<&str> = l.split('\t').collect();
            assert_eq!(cols.len(), 4, "{name} line {n}: {l:?}");
            assert!(!cols[3].trim().is_empty(), "{name} line {n} cites no source");
            Row {
                truth: Verdict::parse(cols[0])
                    .unwrap_or_else(|| panic!("{name} line {n}: verdict {:?}", cols[0])),
                signal: match cols[1] {
                    "yes" => true,
                    "no" => false,
                    other => panic!("{name} line {n}: ua_signal {other:?}"),
                },
                ua: cols[2].to_owned(),
                source: cols[3].to_owned(),
            }
        })
        .collect()
}

/// The package or repository a row cites: `pypi:device-detector==6.5.1`,
/// `github:ua-parser/uap-core` (a pinned `@commit` dropped),
/// `npm:user-agents@2.1.198`, or `web page`.
pub fn origin(source: &str) -> String {
    let parts: Vec<&str> = source.split('/').collect();
    if source.starts_with("github:") && parts.len() >= 2 {
        let repo = parts[1].split('@').next().unwrap_or(parts[1]);
        format!("{}/{repo}", parts[0])
    } else if source.starts_with("pypi:") || source.starts_with("npm:") {
        parts[0].to_owned()
    } else {
        "web page".to_owned()
    }
}

/// The repository and file a row cites: `github:omrilotan/isbot crawlers.yml`.
pub fn origin_file(source: &str) -> String {
    format!("{} {}", origin(source), source.rsplit('/').next().unwrap_or(source))
}

/// Whether a verdict counts as a person's hit: people and their proxies
/// against machines, whatever the kind of machine.
pub fn person(v: Verdict) -> bool {
    v <= Verdict::Proxy
}

#[derive(Default)]
pub struct Tally {
    pub rows: usize,
    pub right: usize,
}

impl Tally {
    pub fn pct(&self) -> String {
        pct(self.right, self.rows)
    }
}

pub fn pct(a: usize, b: usize) -> String {
    if b == 0 { "-".to_owned() } else { format!("{:.1}%", 100.0 * a as f64 / b as f64) }
}

/// Precision and recall per verdict from `(truth, predicted)` pairs.
pub fn print_verdicts(title: &str, pairs: &[(Verdict, Verdict)]) {
    println!("{title}");
    println!("  {:<8} {:>5} {:>9} {:>7}", "verdict", "rows", "precision", "recall");
    for v in Verdict::ALL {
        let truth = pairs.iter().filter(|(t, _)| *t == v).count();
        let predicted = pairs.iter().filter(|(_, p)| *p == v).count();
        let right = pairs.iter().filter(|(t, p)| *t == v && *p == v).count();
        println!("  {:<8} {:>5} {:>9} {:>7}", v.as_str(), truth, pct(right, predicted), pct(right, truth));
    }
}

/// One source's figures from `(truth, predicted)` pairs: rows, the exact
/// verdict right, and person or machine right, in all and per true verdict,
/// with precision per verdict (recall is the exact figure of its row).
pub fn print_scores(title: &str, pairs: &[(Verdict, Verdict)]) {
    let exact = pairs.iter().filter(|(t, p)| t == p).count();
    let counted = pairs.iter().filter(|(t, p)| person(*t) == person(*p)).count();
    println!(
        "{title}: {} rows, exact {} ({exact}), person or machine {} ({counted})",
        pairs.len(),
        pct(exact, pairs.len()),
        pct(counted, pairs.len())
    );
    println!("  {:<8} {:>5} {:>7} {:>9} {:>15}", "verdict", "rows", "exact", "precision", "person/machine");
    for v in Verdict::ALL {
        let of_v: Vec<_> = pairs.iter().filter(|(t, _)| *t == v).collect();
        let right = of_v.iter().filter(|(_, p)| *p == v).count();
        let counted = of_v.iter().filter(|(t, p)| person(*t) == person(*p)).count();
        let predicted = pairs.iter().filter(|(_, p)| *p == v).count();
        println!(
            "  {:<8} {:>5} {:>7} {:>9} {:>15}",
            v.as_str(),
            of_v.len(),
            pct(right, of_v.len()),
            pct(right, predicted),
            pct(counted, of_v.len())
        );
    }
}
