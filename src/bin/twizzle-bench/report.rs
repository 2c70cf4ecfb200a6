//! The figures of a run, printed as a table (one server, or ours beside the
//! peer with ratios) and written as JSON.

use serde_json::{json, Map, Value};

/// One figure.
#[derive(Debug, Clone)]
pub struct Row {
    /// Its JSON key.
    pub key: &'static str,
    /// Its label in the table.
    pub label: &'static str,
    /// The value; `None` when it could not be measured.
    pub value: Option<f64>,
    /// Its unit, shown after the value.
    pub unit: &'static str,
    /// Digits after the decimal point in the table.
    pub decimals: usize,
}

/// The figures of one run against one server.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// `ours` or `peer`.
    pub target: String,
    /// The figures, in table order.
    pub rows: Vec<Row>,
    /// Things that make the figures less trustworthy (e.g. a saturated generator).
    pub warnings: Vec<String>,
    /// Things worth knowing (e.g. close codes seen).
    pub notes: Vec<String>,
}

impl Figures {
    /// No figures yet, for `target`.
    pub fn new(target: &str) -> Figures {
        Figures {
            target: target.to_owned(),
            ..Figures::default()
        }
    }

    /// Adds a figure.
    pub fn add(
        &mut self,
        key: &'static str,
        label: &'static str,
        value: Option<f64>,
        unit: &'static str,
        decimals: usize,
    ) {
        self.rows.push(Row {
            key,
            label,
            value,
            unit,
            decimals,
        });
    }

    /// Adds a figure that counts something: no unit, no decimals.
    pub fn add_count(&mut self, key: &'static str, label: &'static str, n: u64) {
        self.add(key, label, Some(n as f64), "", 0);
    }

    /// The value of the figure `key`, if present and measured.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.key == key)
            .and_then(|r| r.value)
    }

    /// The figures as a JSON object, keyed by `key`.
    pub fn to_json(&self) -> Value {
        let mut figures = Map::new();
        for row in &self.rows {
            figures.insert(row.key.to_owned(), json!(row.value));
        }
        json!({
            "target": self.target,
            "figures": figures,
            "warnings": self.warnings,
            "notes": self.notes,
        })
    }
}

/// A value as the tables show it: `decimals` digits, thousands grouped, `n/a` if unmeasured.
pub fn format_value(value: Option<f64>, decimals: usize) -> String {
    match value {
        None => "n/a".to_owned(),
        Some(v) => {
            let text = format!("{v:.decimals$}");
            group_thousands(&text)
        }
    }
}

/// `1234567.8` as `1,234,567.8`.
fn group_thousands(text: &str) -> String {
    let (sign, rest) = match text.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", text),
    };
    let (int, frac) = match rest.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (rest, None),
    };
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        Some(frac) => format!("{sign}{grouped}.{frac}"),
        None => format!("{sign}{grouped}"),
    }
}

/// Prints one run's table, its notes and warnings.
pub fn print_single(title: &str, figures: &Figures) {
    println!("\n{title} — server: {}\n", figures.target);
    let width = figures
        .rows
        .iter()
        .map(|r| r.label.len())
        .max()
        .unwrap_or(10);
    for row in &figures.rows {
        println!(
            "  {:<width$}  {:>16} {}",
            row.label,
            format_value(row.value, row.decimals),
            row.unit
        );
    }
    print_remarks(figures);
}

/// Prints a table with a header row, each column as wide as its widest cell.
pub fn print_grid(title: &str, header: &[&str], rows: &[Vec<String>]) {
    println!("\n{title}\n");
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(i) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("  {}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    );
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Prints the notes and warnings of `figures`.
pub fn print_remarks(figures: &Figures) {
    for note in &figures.notes {
        println!("  note ({}): {note}", figures.target);
    }
    for warning in &figures.warnings {
        println!("  WARNING ({}): {warning}", figures.target);
    }
}

/// The median of the measured values of `key` over `runs`.
fn median(runs: &[&Figures], key: &str) -> Option<f64> {
    let mut values: Vec<f64> = runs.iter().filter_map(|f| f.get(key)).collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// Prints ours beside the peer (medians over rounds) with the ratio ours/peer.
pub fn print_compare(title: &str, ours: &[Figures], peer: &[Figures]) {
    let rounds = ours.len().max(peer.len());
    println!(
        "\n{title} — ours vs peer{}\n",
        if rounds > 1 {
            format!(" (medians of {rounds} alternating rounds)")
        } else {
            String::new()
        }
    );
    let Some(first) = ours.first().or(peer.first()) else {
        return;
    };
    let ours: Vec<&Figures> = ours.iter().collect();
    let peer: Vec<&Figures> = peer.iter().collect();
    let width = first.rows.iter().map(|r| r.label.len()).max().unwrap_or(10);
    println!(
        "  {:<width$}  {:>16}  {:>16}  {:>9}  unit",
        "", "ours", "peer", "ours/peer"
    );
    for row in &first.rows {
        let (a, b) = (median(&ours, row.key), median(&peer, row.key));
        let ratio = match (a, b) {
            (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
            (Some(a), Some(b)) if a == b => "1.00".to_owned(),
            _ => "-".to_owned(),
        };
        println!(
            "  {:<width$}  {:>16}  {:>16}  {:>9}  {}",
            row.label,
            format_value(a, row.decimals),
            format_value(b, row.decimals),
            ratio,
            row.unit
        );
    }
    for figures in ours.iter().chain(peer.iter()) {
        print_remarks(figures);
    }
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &std::path::Path, value: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(group_thousands("1234567.89"), "1,234,567.89");
        assert_eq!(group_thousands("-1234"), "-1,234");
        assert_eq!(group_thousands("123"), "123");
        assert_eq!(format_value(None, 1), "n/a");
    }

    #[test]
    fn medians_ignore_missing_values() {
        let mut a = Figures::new("ours");
        a.add("x", "x", Some(1.0), "", 0);
        let mut b = Figures::new("ours");
        b.add("x", "x", Some(3.0), "", 0);
        let mut c = Figures::new("ours");
        c.add("x", "x", None, "", 0);
        assert_eq!(median(&[&a, &b, &c], "x"), Some(2.0));
        assert_eq!(median(&[&c], "x"), None);
    }
}
