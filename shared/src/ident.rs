//! Identifiers that end up inside SQL text (schemas, tables, columns, primary keys).
//! Parse, don't validate: `Ident::parse` is the only way to make one, so every name
//! spliced into a statement has been checked once, and `quoted()` renders it safely.

use crate::error::{Error, Result};
use std::fmt;

/// A checked SQL identifier: ASCII letter or underscore first, then letters, digits,
/// underscores or `$`; at most 255 bytes. Case is kept as written.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(into = "String", try_from = "String")]
pub struct Ident(String);

impl TryFrom<String> for Ident {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Ident::parse("identifier", &s)
    }
}

impl From<Ident> for String {
    fn from(i: Ident) -> String {
        i.0
    }
}

impl Ident {
    /// Parse `value` as an identifier; `what` names its role in the error message.
    pub fn parse(what: &'static str, value: &str) -> Result<Self> {
        let err = |reason| Error::Identifier {
            what,
            value: value.to_string(),
            reason,
        };
        let mut chars = value.chars();
        match chars.next() {
            None => return Err(err("it is empty")),
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
            Some(_) => return Err(err("it must start with a letter or underscore")),
        }
        if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            return Err(err("only letters, digits, `_` and `$` are allowed"));
        }
        if value.len() > 255 {
            return Err(err("it is longer than 255 bytes"));
        }
        Ok(Ident(value.to_string()))
    }

    /// The identifier as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identifier in double quotes, safe to splice into SQL.
    pub fn quoted(&self) -> String {
        // parse() admits no quote character, so no escaping is needed.
        format!("\"{}\"", self.0)
    }

    /// A new identifier with a suffix (e.g. `_PGP_TEST`); the suffix is checked too.
    pub fn with_suffix(&self, suffix: &str) -> Result<Self> {
        Ident::parse("derived table name", &format!("{}{}", self.0, suffix))
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A schema-qualified table name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TableName {
    pub schema: Ident,
    pub table: Ident,
}

impl TableName {
    pub fn new(schema: Ident, table: Ident) -> Self {
        TableName { schema, table }
    }
    /// `"schema"."table"`, safe to splice into SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", self.schema.quoted(), self.table.quoted())
    }
    /// The same schema with a table name suffix (a load table, a test table).
    pub fn with_suffix(&self, suffix: &str) -> Result<Self> {
        Ok(TableName {
            schema: self.schema.clone(),
            table: self.table.with_suffix(suffix)?,
        })
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_name_is_accepted_and_quoted() {
        let i = Ident::parse("table", "merge_requests").unwrap();
        assert_eq!(i.quoted(), "\"merge_requests\"");
    }

    #[test]
    fn a_name_with_a_quote_is_rejected() {
        assert!(Ident::parse("table", "a\"; drop table x; --").is_err());
    }

    #[test]
    fn a_name_with_a_space_or_dot_is_rejected() {
        assert!(Ident::parse("table", "a b").is_err());
        assert!(Ident::parse("table", "a.b").is_err());
    }

    #[test]
    fn an_empty_or_digit_first_name_is_rejected() {
        assert!(Ident::parse("table", "").is_err());
        assert!(Ident::parse("table", "1abc").is_err());
    }

    #[test]
    fn case_is_kept() {
        assert_eq!(
            Ident::parse("t", "GitLab_DB").unwrap().as_str(),
            "GitLab_DB"
        );
    }
}
