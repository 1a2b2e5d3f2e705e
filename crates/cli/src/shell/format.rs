//! Output formats of the shell: an aligned table, JSON, CSV and one line
//! per value. Pure: values in, bytes out to any `Write`, so every value
//! type is unit-tested here.
//!
//! Every format streams. JSON, CSV and line write each row as it comes. The table needs
//! column widths, so it holds back the first [`WIDTH_SAMPLE_ROWS`] rows to
//! measure them, then prints those and streams the rest with the same
//! widths (a longer cell later just pushes its line out); a result of any
//! size is printed in bounded memory.

use std::io::{self, Write};

use dqlite_client::Value;
use unicode_width::UnicodeWidthStr;

/// Rows measured before the table's column widths are fixed.
pub const WIDTH_SAMPLE_ROWS: usize = 1000;

/// Output format (`-f`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns under a header.
    Tabular,
    /// A JSON array of objects, one row per line.
    Json,
    /// Comma-separated values with a header line (RFC 4180 quoting).
    Csv,
    /// One `column = value` line per value, a blank line between rows.
    Line,
}

impl Format {
    /// The name `-f` and `.mode` take.
    pub fn name(self) -> &'static str {
        match self {
            Format::Tabular => "tabular",
            Format::Json => "json",
            Format::Csv => "csv",
            Format::Line => "line",
        }
    }

    /// The format called `name`, if any.
    pub fn from_name(name: &str) -> Option<Format> {
        [Format::Tabular, Format::Json, Format::Csv, Format::Line]
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }
}

/// Writes one result set in the chosen format.
pub enum ResultWriter<W: Write> {
    /// See [`TableWriter`].
    Table(TableWriter<W>),
    /// See [`JsonWriter`].
    Json(JsonWriter<W>),
    /// See [`CsvWriter`].
    Csv(CsvWriter<W>),
    /// See [`LineWriter`].
    Line(LineWriter<W>),
}

impl<W: Write> ResultWriter<W> {
    /// Starts a result with these columns.
    pub fn new(format: Format, out: W, columns: &[String]) -> io::Result<Self> {
        Ok(match format {
            Format::Tabular => ResultWriter::Table(TableWriter::new(out, columns)),
            Format::Json => ResultWriter::Json(JsonWriter::new(out, columns)?),
            Format::Csv => ResultWriter::Csv(CsvWriter::new(out, columns)?),
            Format::Line => ResultWriter::Line(LineWriter::new(out, columns)),
        })
    }

    /// Adds one row.
    pub fn row(&mut self, values: &[Value]) -> io::Result<()> {
        match self {
            ResultWriter::Table(t) => t.row(values),
            ResultWriter::Json(j) => j.row(values),
            ResultWriter::Csv(c) => c.row(values),
            ResultWriter::Line(l) => l.row(values),
        }
    }

    /// Ends the result.
    pub fn finish(self) -> io::Result<W> {
        match self {
            ResultWriter::Table(t) => t.finish(),
            ResultWriter::Json(j) => j.finish(),
            ResultWriter::Csv(c) => c.finish(),
            ResultWriter::Line(l) => l.finish(),
        }
    }
}

/// One cell as text, with its alignment.
struct Cell {
    text: String,
    right: bool,
}

/// An aligned table:
///
/// ```text
/// id | name  | data
/// ---+-------+----------
///  1 | héllo | x'0102ff'
///  2 | NULL  | x''
/// ```
pub struct TableWriter<W: Write> {
    out: W,
    columns: Vec<String>,
    widths: Vec<usize>,
    /// Rows held back until the widths are fixed; `None` once printed.
    sample: Option<Vec<Vec<Cell>>>,
}

impl<W: Write> TableWriter<W> {
    /// A table with these column names.
    pub fn new(out: W, columns: &[String]) -> Self {
        let columns: Vec<String> = columns.iter().map(|c| escape_control(c)).collect();
        let widths = columns.iter().map(|c| c.width()).collect();
        TableWriter {
            out,
            columns,
            widths,
            sample: Some(Vec::new()),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, values: &[Value]) -> io::Result<()> {
        let cells: Vec<Cell> = values.iter().map(table_cell).collect();
        match &mut self.sample {
            Some(sample) => {
                for (width, cell) in self.widths.iter_mut().zip(&cells) {
                    *width = (*width).max(cell.text.width());
                }
                sample.push(cells);
                if sample.len() >= WIDTH_SAMPLE_ROWS {
                    self.flush_sample()?;
                }
                Ok(())
            }
            None => self.write_row(&cells),
        }
    }

    /// Prints anything held back and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.flush_sample()?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn flush_sample(&mut self) -> io::Result<()> {
        let Some(sample) = self.sample.take() else {
            return Ok(());
        };
        if self.columns.is_empty() {
            return Ok(());
        }
        let header: Vec<Cell> = self
            .columns
            .iter()
            .map(|c| Cell {
                text: c.clone(),
                right: false,
            })
            .collect();
        self.write_row(&header)?;
        let rule: Vec<String> = self.widths.iter().map(|w| "-".repeat(*w)).collect();
        writeln!(self.out, "{}", rule.join("-+-"))?;
        for cells in &sample {
            self.write_row(cells)?;
        }
        Ok(())
    }

    fn write_row(&mut self, cells: &[Cell]) -> io::Result<()> {
        let mut line = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                line.push_str(" | ");
            }
            let width = self.widths.get(i).copied().unwrap_or(0);
            let pad = width.saturating_sub(cell.text.width());
            let last = i + 1 == cells.len();
            if cell.right {
                line.push_str(&" ".repeat(pad));
                line.push_str(&cell.text);
            } else {
                line.push_str(&cell.text);
                if !last {
                    line.push_str(&" ".repeat(pad));
                }
            }
        }
        writeln!(self.out, "{line}")
    }
}

/// A JSON array with one object per row, one row per line. Blobs are hex
/// strings, UNIXTIME values RFC 3339 strings, non-finite floats `null`.
/// Keys are written as they come, so repeated column names stay repeated.
pub struct JsonWriter<W: Write> {
    out: W,
    keys: Vec<String>,
    rows: u64,
}

impl<W: Write> JsonWriter<W> {
    /// Starts the array.
    pub fn new(mut out: W, columns: &[String]) -> io::Result<Self> {
        write!(out, "[")?;
        let keys = columns.iter().map(|c| json_string(c)).collect();
        Ok(JsonWriter { out, keys, rows: 0 })
    }

    /// Adds a row.
    pub fn row(&mut self, values: &[Value]) -> io::Result<()> {
        let separator = if self.rows == 0 { "\n" } else { ",\n" };
        let fields: Vec<String> = self
            .keys
            .iter()
            .zip(values)
            .map(|(k, v)| format!("{k}:{}", json_value(v)))
            .collect();
        write!(self.out, "{separator}{{{}}}", fields.join(","))?;
        self.rows += 1;
        Ok(())
    }

    /// Closes the array.
    pub fn finish(mut self) -> io::Result<W> {
        if self.rows == 0 {
            writeln!(self.out, "]")?;
        } else {
            writeln!(self.out, "\n]")?;
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

/// CSV (RFC 4180): a header line, then one line per row; a field is
/// quoted when it holds a comma, a quote or a line break, NULL is empty,
/// blobs are hex.
pub struct CsvWriter<W: Write> {
    out: W,
}

impl<W: Write> CsvWriter<W> {
    /// Writes the header line.
    pub fn new(mut out: W, columns: &[String]) -> io::Result<Self> {
        let header: Vec<String> = columns.iter().map(|c| csv_field(c)).collect();
        writeln!(out, "{}", header.join(","))?;
        Ok(CsvWriter { out })
    }

    /// Adds a row.
    pub fn row(&mut self, values: &[Value]) -> io::Result<()> {
        let fields: Vec<String> = values
            .iter()
            .map(|v| match v {
                Value::Null => String::new(),
                Value::Blob(b) => hex(b),
                other => csv_field(&display_value(other)),
            })
            .collect();
        writeln!(self.out, "{}", fields.join(","))
    }

    /// Ends the result.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// SQLite's `.mode line`: each value on its own line as `name = value`,
/// names right-aligned, a blank line between rows.
pub struct LineWriter<W: Write> {
    out: W,
    columns: Vec<String>,
    width: usize,
    rows: u64,
}

impl<W: Write> LineWriter<W> {
    /// A result with these columns.
    pub fn new(out: W, columns: &[String]) -> Self {
        let columns: Vec<String> = columns.iter().map(|c| escape_control(c)).collect();
        let width = columns.iter().map(|c| c.width()).max().unwrap_or(0);
        LineWriter {
            out,
            columns,
            width,
            rows: 0,
        }
    }

    /// Adds a row.
    pub fn row(&mut self, values: &[Value]) -> io::Result<()> {
        if self.rows > 0 {
            writeln!(self.out)?;
        }
        for (name, value) in self.columns.iter().zip(values) {
            let pad = " ".repeat(self.width.saturating_sub(name.width()));
            writeln!(self.out, "{pad}{name} = {}", table_cell(value).text)?;
        }
        self.rows += 1;
        Ok(())
    }

    /// Ends the result.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

fn table_cell(value: &Value) -> Cell {
    let right = matches!(value, Value::Integer(_) | Value::Float(_));
    let text = match value {
        Value::Text(s) | Value::Iso8601(s) => escape_control(s),
        other => display_value(other),
    };
    Cell { text, right }
}

/// A value as the shell shows it in a table.
pub fn display_value(value: &Value) -> String {
    match value {
        Value::Integer(v) => v.to_string(),
        Value::Float(v) => format_float(*v),
        Value::Text(s) | Value::Iso8601(s) => s.clone(),
        Value::Blob(b) => format!("x'{}'", hex(b)),
        Value::Null => "NULL".to_owned(),
        Value::UnixTime(t) => rfc3339(*t),
        Value::Boolean(b) => b.to_string(),
    }
}

/// A value as JSON text.
pub fn json_value(value: &Value) -> String {
    match value {
        Value::Integer(v) => v.to_string(),
        // Rust's forms (`1.5e300`, `-0.0`, `3.0`) are valid JSON numbers.
        Value::Float(v) if v.is_finite() => format_float(*v),
        Value::Float(_) | Value::Null => "null".to_owned(),
        Value::Text(s) | Value::Iso8601(s) => json_string(s),
        Value::Blob(b) => json_string(&hex(b)),
        Value::UnixTime(t) => json_string(&rfc3339(*t)),
        Value::Boolean(b) => b.to_string(),
    }
}

/// A JSON string literal.
pub fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// Floats as SQLite's shell shows them: integral values keep a `.0`,
/// very large or small magnitudes use an exponent, everything else the
/// shortest text that reads back as the same double.
pub fn format_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".to_owned();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Inf" } else { "-Inf" }.to_owned();
    }
    let magnitude = v.abs();
    if magnitude != 0.0 && !(1e-5..1e16).contains(&magnitude) {
        return format!("{v:e}");
    }
    if v.fract() == 0.0 {
        return format!("{v:.1}");
    }
    v.to_string()
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Control characters would break the table's lines: show them escaped.
fn escape_control(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC, proleptic
/// Gregorian; the civil-from-days algorithm of H. Hinnant).
pub fn rfc3339(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn table(columns: &[&str], rows: &[Vec<Value>]) -> String {
        let mut t = TableWriter::new(Vec::new(), &cols(columns));
        for r in rows {
            t.row(r).unwrap();
        }
        String::from_utf8(t.finish().unwrap()).unwrap()
    }

    fn json(columns: &[&str], rows: &[Vec<Value>]) -> String {
        let mut j = JsonWriter::new(Vec::new(), &cols(columns)).unwrap();
        for r in rows {
            j.row(r).unwrap();
        }
        String::from_utf8(j.finish().unwrap()).unwrap()
    }

    #[test]
    fn table_shows_every_value_type() {
        let out = table(
            &["i", "f", "s", "b", "n", "t", "d", "ok"],
            &[
                vec![
                    Value::Integer(i64::MIN),
                    Value::Float(1.5e300),
                    Value::Text("héllo ✓".into()),
                    Value::Blob(vec![0, 1, 0xff]),
                    Value::Null,
                    Value::UnixTime(1_700_000_000),
                    Value::Iso8601("2020-01-01 10:00:00".into()),
                    Value::Boolean(true),
                ],
                vec![
                    Value::Integer(7),
                    Value::Float(0.1),
                    Value::Text(String::new()),
                    Value::Blob(vec![]),
                    Value::Integer(3),
                    Value::UnixTime(0),
                    Value::Iso8601(String::new()),
                    Value::Boolean(false),
                ],
            ],
        );
        let expected = "\
i                    | f       | s       | b         | n    | t                    | d                   | ok
---------------------+---------+---------+-----------+------+----------------------+---------------------+------
-9223372036854775808 | 1.5e300 | héllo ✓ | x'0001ff' | NULL | 2023-11-14T22:13:20Z | 2020-01-01 10:00:00 | true
                   7 |     0.1 |         | x''       |    3 | 1970-01-01T00:00:00Z |                     | false
";
        assert_eq!(out, expected);
    }

    #[test]
    fn table_aligns_wide_characters_by_display_width() {
        let out = table(
            &["k", "v"],
            &[
                vec![Value::Text("日本".into()), Value::Integer(1)],
                vec![Value::Text("ab".into()), Value::Integer(22)],
            ],
        );
        assert_eq!(out, "k    | v\n-----+---\n日本 |  1\nab   | 22\n");
    }

    #[test]
    fn table_escapes_control_characters() {
        let out = table(&["s"], &[vec![Value::Text("a\nb\tc\u{1}".into())]]);
        assert_eq!(out, "s\n------------\na\\nb\\tc\\u{1}\n");
    }

    #[test]
    fn empty_results_still_show_the_header() {
        assert_eq!(table(&["a", "bb"], &[]), "a | bb\n--+---\n");
        assert_eq!(table(&[], &[]), "");
    }

    #[test]
    fn table_streams_after_the_width_sample() {
        let mut t = TableWriter::new(Vec::new(), &cols(&["n"]));
        for i in 0..WIDTH_SAMPLE_ROWS as i64 {
            t.row(&[Value::Integer(i % 10)]).unwrap();
        }
        // The sample was printed once it was full.
        let TableWriter { out, .. } = &t;
        assert!(out.len() > WIDTH_SAMPLE_ROWS * 2);
        t.row(&[Value::Integer(12345)]).unwrap();
        let out = String::from_utf8(t.finish().unwrap()).unwrap();
        assert_eq!(out.lines().count(), 2 + WIDTH_SAMPLE_ROWS + 1);
        assert_eq!(out.lines().last(), Some("12345"));
    }

    #[test]
    fn json_shows_every_value_type() {
        let out = json(
            &["i", "f", "s", "b", "n", "t", "ok", "inf"],
            &[vec![
                Value::Integer(i64::MAX),
                Value::Float(-2.5),
                Value::Text("q\"uote ✓\n".into()),
                Value::Blob(vec![0xde, 0xad]),
                Value::Null,
                Value::UnixTime(86_400),
                Value::Boolean(true),
                Value::Float(f64::INFINITY),
            ]],
        );
        assert_eq!(
            out,
            "[\n{\"i\":9223372036854775807,\"f\":-2.5,\"s\":\"q\\\"uote ✓\\n\",\"b\":\"dead\",\"n\":null,\"t\":\"1970-01-02T00:00:00Z\",\"ok\":true,\"inf\":null}\n]\n"
        );
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed[0]["s"], "q\"uote ✓\n");
    }

    #[test]
    fn json_rows_and_empty_results_are_valid_json() {
        let out = json(&["a"], &[vec![Value::Float(3.0)], vec![Value::Float(1e-7)]]);
        assert_eq!(out, "[\n{\"a\":3.0},\n{\"a\":1e-7}\n]\n");
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed.as_array().unwrap().len(), 2);
        assert_eq!(json(&["a"], &[]), "[]\n");
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let mut c = CsvWriter::new(Vec::new(), &cols(&["a", "b,c"])).unwrap();
        c.row(&[Value::Text("x\"y".into()), Value::Null]).unwrap();
        c.row(&[Value::Integer(1), Value::Text("l1\nl2".into())])
            .unwrap();
        c.row(&[Value::Blob(vec![1, 0xab]), Value::Float(2.0)])
            .unwrap();
        let out = String::from_utf8(c.finish().unwrap()).unwrap();
        assert_eq!(out, "a,\"b,c\"\n\"x\"\"y\",\n1,\"l1\nl2\"\n01ab,2.0\n");
    }

    #[test]
    fn line_mode_aligns_names() {
        let mut l = LineWriter::new(Vec::new(), &cols(&["id", "name"]));
        l.row(&[Value::Integer(1), Value::Text("a".into())])
            .unwrap();
        l.row(&[Value::Integer(2), Value::Null]).unwrap();
        let out = String::from_utf8(l.finish().unwrap()).unwrap();
        assert_eq!(out, "  id = 1\nname = a\n\n  id = 2\nname = NULL\n");
    }

    #[test]
    fn format_names_round_trip() {
        for f in [Format::Tabular, Format::Json, Format::Csv, Format::Line] {
            assert_eq!(Format::from_name(f.name()), Some(f));
        }
        assert_eq!(Format::from_name("CSV"), Some(Format::Csv));
        assert_eq!(Format::from_name("box"), None);
    }

    #[test]
    fn floats() {
        assert_eq!(format_float(3.0), "3.0");
        assert_eq!(format_float(-0.0), "-0.0");
        assert_eq!(format_float(0.1), "0.1");
        assert_eq!(format_float(1.5e300), "1.5e300");
        assert_eq!(format_float(2.5e-10), "2.5e-10");
        assert_eq!(format_float(123456.789), "123456.789");
        assert_eq!(format_float(f64::NAN), "NaN");
        assert_eq!(format_float(f64::NEG_INFINITY), "-Inf");
    }

    #[test]
    fn unix_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(4_102_444_800), "2100-01-01T00:00:00Z");
    }
}
