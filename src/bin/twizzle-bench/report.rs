//! The figures of a run, printed as a table (one server, or ours beside
//! other servers with ratios) and written as JSON.

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
    /// The server's name: `ours`, `peer`, a `--peer-name`, or a command.
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

/// One server's runs in a comparison: a column of the table.
pub struct Column<'a> {
    /// The server's name: `ours` for the first column.
    pub name: &'a str,
    /// Its runs, one per round.
    pub runs: &'a [Figures],
}

/// Narrowest value column of a comparison.
const VALUE_WIDTH: usize = 16;
/// Narrowest ratio column of a comparison.
const RATIO_WIDTH: usize = 9;

/// `a / b` as the ratio columns show it: `-` when it has no meaning.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
        (Some(a), Some(b)) if a == b => "1.00".to_owned(),
        _ => "-".to_owned(),
    }
}

/// The comparison table: the first column's figures (ours), then each other
/// server's (medians over rounds), then for each other server the ratio
/// `ours/NAME`. Rows are those of the first run found.
pub fn compare_table(title: &str, columns: &[Column]) -> String {
    use std::fmt::Write as _;
    let rounds = columns.iter().map(|c| c.runs.len()).max().unwrap_or(0);
    let names: Vec<&str> = columns.iter().map(|c| c.name).collect();
    let mut out = format!(
        "\n{title} — {}{}\n\n",
        names.join(" vs "),
        if rounds > 1 {
            format!(" (medians of {rounds} alternating rounds)")
        } else {
            String::new()
        }
    );
    let Some(first) = columns.iter().find_map(|c| c.runs.first()) else {
        return out;
    };
    let Some((ours, others)) = columns.split_first() else {
        return out;
    };
    let runs: Vec<Vec<&Figures>> = columns.iter().map(|c| c.runs.iter().collect()).collect();
    let value_widths: Vec<usize> = names
        .iter()
        .map(|n| n.chars().count().max(VALUE_WIDTH))
        .collect();
    let ratio_names: Vec<String> = others
        .iter()
        .map(|c| format!("{}/{}", ours.name, c.name))
        .collect();
    let ratio_widths: Vec<usize> = ratio_names
        .iter()
        .map(|n| n.chars().count().max(RATIO_WIDTH))
        .collect();
    let width = first.rows.iter().map(|r| r.label.len()).max().unwrap_or(10);
    let line = |out: &mut String, label: &str, values: &[String], ratios: &[String], unit: &str| {
        let _ = write!(out, "  {label:<width$}");
        for (value, w) in values.iter().zip(&value_widths) {
            let _ = write!(out, "  {value:>w$}");
        }
        for (ratio, w) in ratios.iter().zip(&ratio_widths) {
            let _ = write!(out, "  {ratio:>w$}");
        }
        let _ = writeln!(out, "  {unit}");
    };
    let header: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    line(&mut out, "", &header, &ratio_names, "unit");
    for row in &first.rows {
        let medians: Vec<Option<f64>> = runs.iter().map(|r| median(r, row.key)).collect();
        let values: Vec<String> = medians
            .iter()
            .map(|m| format_value(*m, row.decimals))
            .collect();
        let ratios: Vec<String> = medians[1..].iter().map(|m| ratio(medians[0], *m)).collect();
        line(&mut out, row.label, &values, &ratios, row.unit);
    }
    out
}

/// Prints the comparison table (see [`compare_table`]), then every run's
/// notes and warnings, column by column.
pub fn print_compare(title: &str, columns: &[Column]) {
    print!("{}", compare_table(title, columns));
    for column in columns {
        for figures in column.runs {
            print_remarks(figures);
        }
    }
}

/// Each server's medians over its runs, keyed by its name and then by figure.
pub fn medians_json(columns: &[Column]) -> Value {
    let mut servers = Map::new();
    for column in columns {
        let runs: Vec<&Figures> = column.runs.iter().collect();
        let mut figures = Map::new();
        for row in column.runs.first().map_or(&[][..], |f| &f.rows[..]) {
            figures.insert(row.key.to_owned(), json!(median(&runs, row.key)));
        }
        servers.insert(column.name.to_owned(), Value::Object(figures));
    }
    Value::Object(servers)
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

    /// Runs of one server with the figures `(key, label, unit, value)`.
    fn runs(
        target: &str,
        values: &[&[(&'static str, &'static str, &'static str, f64)]],
    ) -> Vec<Figures> {
        values
            .iter()
            .map(|rows| {
                let mut f = Figures::new(target);
                for (key, label, unit, value) in rows.iter() {
                    f.add(key, label, Some(*value), unit, 0);
                }
                f
            })
            .collect()
    }

    const RATE: (&str, &str, &str) = ("deliveries_per_sec", "deliveries per second (mean)", "/s");
    const LOST: (&str, &str, &str) = ("lost", "lost deliveries", "");

    fn rate(v: f64) -> (&'static str, &'static str, &'static str, f64) {
        (RATE.0, RATE.1, RATE.2, v)
    }

    fn lost(v: f64) -> (&'static str, &'static str, &'static str, f64) {
        (LOST.0, LOST.1, LOST.2, v)
    }

    /// The two-server table as it was printed before several servers could
    /// be compared, to hold the one-peer output to it.
    fn two_way_before(title: &str, ours: &[Figures], peer: &[Figures]) -> String {
        let rounds = ours.len().max(peer.len());
        let mut out = format!(
            "\n{title} — ours vs peer{}\n\n",
            if rounds > 1 {
                format!(" (medians of {rounds} alternating rounds)")
            } else {
                String::new()
            }
        );
        let first = ours.first().or(peer.first()).unwrap();
        let ours: Vec<&Figures> = ours.iter().collect();
        let peer: Vec<&Figures> = peer.iter().collect();
        let width = first.rows.iter().map(|r| r.label.len()).max().unwrap_or(10);
        out += &format!(
            "  {:<width$}  {:>16}  {:>16}  {:>9}  unit\n",
            "", "ours", "peer", "ours/peer"
        );
        for row in &first.rows {
            let (a, b) = (median(&ours, row.key), median(&peer, row.key));
            let ratio = match (a, b) {
                (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
                (Some(a), Some(b)) if a == b => "1.00".to_owned(),
                _ => "-".to_owned(),
            };
            out += &format!(
                "  {:<width$}  {:>16}  {:>16}  {:>9}  {}\n",
                row.label,
                format_value(a, row.decimals),
                format_value(b, row.decimals),
                ratio,
                row.unit
            );
        }
        out
    }

    #[test]
    fn one_peer_table_is_as_before() {
        let ours = runs(
            "ours",
            &[&[rate(1000.0), lost(0.0)], &[rate(3000.0), lost(0.0)]],
        );
        let peer = runs(
            "peer",
            &[&[rate(500.0), lost(10.0)], &[rate(500.0), lost(20.0)]],
        );
        let columns = [
            Column {
                name: "ours",
                runs: &ours,
            },
            Column {
                name: "peer",
                runs: &peer,
            },
        ];
        let table = compare_table("fanout", &columns);
        assert_eq!(table, two_way_before("fanout", &ours, &peer));
        assert!(table.contains("(medians of 2 alternating rounds)"));
        assert!(table.contains("2,000               500       4.00  /s\n"));
        let one = compare_table(
            "idle",
            &[
                Column {
                    name: "ours",
                    runs: &ours[..1],
                },
                Column {
                    name: "peer",
                    runs: &peer[..1],
                },
            ],
        );
        assert_eq!(one, two_way_before("idle", &ours[..1], &peer[..1]));
        // 0/0 is as good as equal; x/0 has no ratio.
        let zero = runs("peer", &[&[rate(0.0), lost(0.0)]]);
        let ours_zero = runs("ours", &[&[rate(5.0), lost(0.0)]]);
        let table = compare_table(
            "t",
            &[
                Column {
                    name: "ours",
                    runs: &ours_zero,
                },
                Column {
                    name: "peer",
                    runs: &zero,
                },
            ],
        );
        assert_eq!(table, two_way_before("t", &ours_zero, &zero));
        assert!(table.contains("  -  /s\n") && table.contains("1.00  \n"));
    }

    #[test]
    fn several_servers_get_a_value_and_a_ratio_column_each() {
        let ours = runs("ours", &[&[rate(2000.0), lost(0.0)]]);
        let limit = runs("limit", &[&[rate(4000.0), lost(0.0)]]);
        let peer = runs("peer", &[&[rate(500.0), lost(7.0)]]);
        let columns = [
            Column {
                name: "ours",
                runs: &ours,
            },
            Column {
                name: "limit",
                runs: &limit,
            },
            Column {
                name: "a-long-server-name",
                runs: &peer,
            },
        ];
        let table = compare_table("fanout", &columns);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[1], "fanout — ours vs limit vs a-long-server-name");
        let pad = " ".repeat("deliveries per second (mean)".len());
        assert_eq!(
            lines[3],
            format!(
                "  {pad}  {:>16}  {:>16}  {:>18}  {:>10}  {:>23}  unit",
                "ours", "limit", "a-long-server-name", "ours/limit", "ours/a-long-server-name"
            )
        );
        assert_eq!(
            lines[4],
            format!(
                "  deliveries per second (mean)  {:>16}  {:>16}  {:>18}  {:>10}  {:>23}  /s",
                "2,000", "4,000", "500", "0.50", "4.00"
            )
        );
        assert_eq!(
            lines[5],
            format!(
                "  {:<28}  {:>16}  {:>16}  {:>18}  {:>10}  {:>23}  ",
                "lost deliveries", "0", "0", "7", "1.00", "0.00"
            )
        );
        assert_eq!(lines.len(), 6);
    }

    #[test]
    fn medians_are_written_per_server() {
        let ours = runs("ours", &[&[rate(1.0)], &[rate(3.0)]]);
        let limit = runs("limit", &[&[rate(8.0)]]);
        let json = medians_json(&[
            Column {
                name: "ours",
                runs: &ours,
            },
            Column {
                name: "limit",
                runs: &limit,
            },
        ]);
        assert_eq!(
            json,
            json!({"ours": {"deliveries_per_sec": 2.0}, "limit": {"deliveries_per_sec": 8.0}})
        );
    }
}
