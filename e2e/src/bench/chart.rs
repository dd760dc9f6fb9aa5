//! An SVG bar chart of the suite's figures: for every figure whose value and target both hold
//! a number in the same unit, a bar for ours (green: target met, red: not met) under a bar for
//! the target, each row scaled to its own larger value. Figures without a numeric target are
//! left out (the table has them all).

use super::suite::Row;

const WIDTH: f64 = 960.0;
const LABEL_WIDTH: f64 = 420.0;
const BAR_SPACE: f64 = WIDTH - LABEL_WIDTH - 150.0;
const ROW_HEIGHT: f64 = 46.0;
const TOP: f64 = 40.0;

/// A number and the unit written after it ("ms", "s", "/s", ...).
#[derive(Debug, PartialEq)]
pub struct Quantity {
    pub value: f64,
    pub unit: String,
}

/// The first number of `text` that is not part of a word (so "p50 249 ms" gives 249 ms), with
/// the unit after it. Thousands separators (",") inside the number are skipped.
pub fn first_quantity(text: &str) -> Option<Quantity> {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let starts = chars[i].is_ascii_digit() && (i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '.'));
        if !starts {
            i += 1;
            continue;
        }
        let mut number = String::new();
        while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.' || (chars[i] == ',' && chars.get(i + 1).is_some_and(char::is_ascii_digit))) {
            if chars[i] != ',' {
                number.push(chars[i]);
            }
            i += 1;
        }
        while i < chars.len() && chars[i] == ' ' {
            i += 1;
        }
        let unit: String = chars[i..].iter().take_while(|c| c.is_alphabetic() || **c == '/' || **c == '%').collect();
        return number.parse().ok().map(|value| Quantity { value, unit });
    }
    None
}

/// The number a target sets: the one after its first "<=" or ">=".
pub fn target_quantity(target: &str) -> Option<Quantity> {
    let at = target.find("<=").or_else(|| target.find(">="))?;
    first_quantity(&target[at + 2..])
}

/// `ours` and `target` in one unit (seconds are turned into milliseconds when the other is in
/// milliseconds), or `None` when they cannot be compared.
fn comparable(ours: Quantity, target: Quantity) -> Option<(f64, f64)> {
    let ms = |q: &Quantity| if q.unit == "s" { q.value * 1000.0 } else { q.value };
    match (ours.unit.as_str(), target.unit.as_str()) {
        (a, b) if a == b => Some((ours.value, target.value)),
        ("s" | "ms", "s" | "ms") => Some((ms(&ours), ms(&target))),
        // "13.57 / 18.39 Gbit/s" style ratios and bare numbers against a bare target.
        (_, "") => Some((ours.value, target.value)),
        _ => None,
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max { text.to_string() } else { format!("{}...", text.chars().take(max - 3).collect::<String>()) }
}

/// The chart of `rows` as an SVG document.
pub fn svg(rows: &[Row], title: &str) -> String {
    let charted: Vec<(&Row, f64, f64)> = rows
        .iter()
        .filter_map(|r| {
            let (ours, target) = comparable(first_quantity(&r.figure.value)?, target_quantity(&r.figure.target)?)?;
            Some((r, ours, target))
        })
        .collect();
    let height = TOP + ROW_HEIGHT * charted.len() as f64 + 30.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{}</text>\n",
        escape(title)
    );
    for (i, (row, ours, target)) in charted.iter().enumerate() {
        let y = TOP + ROW_HEIGHT * i as f64;
        let scale = BAR_SPACE / ours.max(*target).max(f64::MIN_POSITIVE);
        let colour = match row.figure.met {
            Some(true) => "#2e9d4c",
            Some(false) => "#d0453a",
            None => "#3b73b9",
        };
        out.push_str(&format!(
            "<text x=\"10\" y=\"{:.0}\">{}</text>\n<text x=\"10\" y=\"{:.0}\" fill=\"#666\">{}</text>\n",
            y + 14.0,
            escape(&shorten(&row.figure.what, 64)),
            y + 30.0,
            escape(&shorten(&row.scenario, 64)),
        ));
        let target_label = format!("target {}", shorten(&row.figure.target, 28));
        bar(&mut out, y, target * scale, "#bbbbbb", &target_label);
        let ours_label = format!("ours {}", shorten(&row.figure.value, 28));
        bar(&mut out, y + 17.0, ours * scale, colour, &ours_label);
    }
    out.push_str(&format!(
        "<text x=\"10\" y=\"{:.0}\" fill=\"#666\">Each row is scaled to its own larger value. Green: target met; red: not met.</text>\n</svg>\n",
        height - 10.0
    ));
    out
}

/// One bar of a row, `width` long from the labels' edge, with its label after it.
fn bar(out: &mut String, y: f64, width: f64, colour: &str, label: &str) {
    out.push_str(&format!(
        "<rect x=\"{LABEL_WIDTH}\" y=\"{:.0}\" width=\"{width:.1}\" height=\"14\" fill=\"{colour}\"/>\
         <text x=\"{:.1}\" y=\"{:.0}\">{}</text>\n",
        y + 3.0,
        LABEL_WIDTH + width + 6.0,
        y + 14.0,
        escape(label),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Figure;

    #[test]
    fn numbers_units_and_targets() {
        assert_eq!(first_quantity("p50 249 ms, p99 274 ms"), Some(Quantity { value: 249.0, unit: "ms".into() }));
        assert_eq!(first_quantity("7,442/s (median)"), Some(Quantity { value: 7442.0, unit: "/s".into() }));
        assert_eq!(first_quantity("0.74 (13.57 / 18.39 Gbit/s)"), Some(Quantity { value: 0.74, unit: "".into() }));
        assert_eq!(first_quantity("no number"), None);
        assert_eq!(target_quantity(">= 20000/s").map(|q| q.value), Some(20000.0));
        assert_eq!(target_quantity("p50 <= 300 ms, p99 <= 600 ms").map(|q| q.value), Some(300.0));
        assert_eq!(target_quantity("-"), None);
        assert_eq!(comparable(first_quantity("1.5 s").unwrap(), target_quantity("<= 3000 ms").unwrap()), Some((1500.0, 3000.0)));
        assert_eq!(comparable(first_quantity("3 MiB").unwrap(), target_quantity("<= 3 ms").unwrap()), None);
    }

    #[test]
    fn charts_only_what_compares() {
        let row = |what: &str, value: &str, target: &str, met| Row {
            scenario: "bench-x".into(),
            anchor: "-".into(),
            figure: Figure { what: what.into(), value: value.into(), target: target.into(), met, runs: "1".into() },
        };
        let rows = [row("a <b>", "7442/s", ">= 20000/s", Some(false)), row("no target", "3 s", "-", None)];
        let chart = svg(&rows, "suite");
        assert!(chart.starts_with("<svg") && chart.ends_with("</svg>\n"));
        assert!(chart.contains("a &lt;b&gt;") && !chart.contains("no target"));
        assert!(chart.contains("#d0453a"), "not met is red");
    }
}

