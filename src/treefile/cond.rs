//! `conditional-include` conditions: `"<var> <op> <value>"`.
//!
//! As in rpm-ostree, the value's type is given by how it is written: `true`/`false` are
//! booleans, digits are a number, a double-quoted string is a string
//! (`basearch == "x86_64"`). Comparing values of different types is an error, as is
//! an undefined variable: a typo must not silently turn an include off. Numbers
//! support every operator; strings compare by equality or byte-wise ordering; booleans
//! only by equality.

use std::cmp::Ordering;
use std::fmt;

use serde::de::{Deserialize, Deserializer, Error as _};

use super::types::VarValue;

/// Comparison operators, longest spellings first (so `<=` is not read as `<`).
const OPS: &[(&str, Op)] = &[
    ("==", Op::Eq),
    ("!=", Op::Ne),
    ("<=", Op::Le),
    (">=", Op::Ge),
    ("<", Op::Lt),
    (">", Op::Gt),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// One parsed condition, with its text for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Condition {
    pub(crate) var: String,
    pub(crate) op: Op,
    pub(crate) value: VarValue,
    text: String,
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Condition {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| Err(format!("invalid condition {text:?}: {why}"));
        let s = text.trim();
        let name_end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len());
        let (var, rest) = s.split_at(name_end);
        if var.is_empty() {
            return bad("expected `<variable> <op> <value>`");
        }
        let rest = rest.trim_start();
        let Some((value, op)) =
            (OPS.iter()).find_map(|(o, op)| rest.strip_prefix(o).map(|v| (v, *op)))
        else {
            return bad("expected one of the operators == != < <= > >=");
        };
        let value = value.trim();
        let quoted = value.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
        let value = match (value, quoted) {
            ("true", _) => VarValue::Bool(true),
            ("false", _) => VarValue::Bool(false),
            (_, Some(inner)) => VarValue::String(inner.to_string()),
            (v, None) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                match v.parse() {
                    Ok(n) => VarValue::Number(n),
                    Err(_) => return bad("number out of range"),
                }
            }
            _ => {
                return bad(
                    "the value must be true, false, a non-negative integer or a double-quoted string",
                );
            }
        };
        Ok(Condition {
            var: var.to_string(),
            op,
            value,
            text: text.to_string(),
        })
    }

    /// Evaluate against `lookup` (variable name -> value).
    pub(crate) fn evaluate(
        &self,
        lookup: impl Fn(&str) -> Option<VarValue>,
    ) -> Result<bool, String> {
        let Some(actual) = lookup(&self.var) else {
            return Err(format!(
                "condition {:?}: unknown variable `{}`",
                self.text, self.var
            ));
        };
        let ord = match (&actual, &self.value) {
            (VarValue::Number(a), VarValue::Number(b)) => a.cmp(b),
            (VarValue::String(a), VarValue::String(b)) => a.as_bytes().cmp(b.as_bytes()),
            (VarValue::Bool(a), VarValue::Bool(b)) => match self.op {
                Op::Eq => return Ok(a == b),
                Op::Ne => return Ok(a != b),
                _ => {
                    return Err(format!(
                        "condition {:?}: booleans can only be compared with == or !=",
                        self.text
                    ));
                }
            },
            (a, b) => {
                return Err(format!(
                    "condition {:?}: `{}` is {} ({a}), but it is compared with {}",
                    self.text,
                    self.var,
                    a.type_name(),
                    b.type_name()
                ));
            }
        };
        Ok(match self.op {
            Op::Eq => ord == Ordering::Equal,
            Op::Ne => ord != Ordering::Equal,
            Op::Lt => ord == Ordering::Less,
            Op::Le => ord != Ordering::Greater,
            Op::Gt => ord == Ordering::Greater,
            Op::Ge => ord != Ordering::Less,
        })
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Condition::parse(&s).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<VarValue> {
        match name {
            "releasever" => Some(VarValue::Number(38)),
            "basearch" => Some(VarValue::String("x86_64".into())),
            "stream" => Some(VarValue::String("next".into())),
            "prod" => Some(VarValue::Bool(true)),
            _ => None,
        }
    }

    #[test]
    fn evaluates_each_operator_by_type() {
        let cases = [
            ("releasever == 38", true),
            ("releasever != 38", false),
            ("releasever >= 35", true),
            ("releasever >= 38", true),
            ("releasever >= 39", false),
            ("releasever > 38", false),
            ("releasever < 100", true),
            // numeric, not lexicographic: "38" > "100" as strings
            ("releasever <= 100", true),
            ("releasever < 9", false),
            (r#"basearch == "x86_64""#, true),
            (r#"basearch != "x86_64""#, false),
            (r#"  basearch=="aarch64"  "#, false),
            (r#"stream < "stable""#, true),
            (r#"stream > "stable""#, false),
            ("prod == true", true),
            ("prod != true", false),
            ("prod == false", false),
        ];
        for (text, want) in cases {
            let c = Condition::parse(text).unwrap();
            assert_eq!(c.evaluate(vars), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_conditions_are_errors() {
        let parse_errors = [
            "releasever",
            "== 3",
            "releasever ~= 3",
            "releasever >= ",
            "basearch == x86_64",
            "basearch == 'x86_64'",
            "releasever >= -1",
            "releasever >= 99999999999999999999999",
        ];
        for text in parse_errors {
            let e = Condition::parse(text).unwrap_err();
            assert!(e.contains("invalid condition"), "{text}: {e}");
        }
        let eval_errors = [
            ("nosuchvar == 1", "unknown variable `nosuchvar`"),
            (r#"releasever == "38""#, "is a number"),
            ("basearch == 1", "is a string"),
            ("prod > false", "booleans"),
        ];
        for (text, want) in eval_errors {
            let e = Condition::parse(text).unwrap().evaluate(vars).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
