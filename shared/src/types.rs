//! The type mapping PostgreSQL -> warehouse, in one place.
//!
//! Columns are described once, warehouse-neutrally (`ColumnType`), from what
//! PostgreSQL reports for the query (type OID and type modifier, so `numeric(38,10)`
//! keeps its precision and scale). Each warehouse renders these types itself. The
//! choice favours exactness over convenience: a value that a warehouse type could not
//! hold exactly (unconstrained `numeric`, `interval`, `money`, `timetz`, ranges, ...)
//! travels as its PostgreSQL text. The README carries the same table for users.

use crate::error::{Error, Result};
use crate::ident::Ident;
use tokio_postgres::types::{Kind, Type};

/// A warehouse-neutral column type.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    Boolean,
    SmallInt,
    Integer,
    BigInt,
    /// 4-byte float (`real`).
    Real,
    /// 8-byte float (`double precision`).
    Double,
    /// `numeric(p,s)` with p <= 38 and 0 <= s <= p.
    Decimal {
        precision: u8,
        scale: u8,
    },
    /// Text, and every type carried as its exact PostgreSQL text.
    Text,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    /// `json` / `jsonb` (DuckDB JSON, Snowflake VARIANT).
    Json,
    /// An array whose elements a warehouse list cannot read back exactly (`json[]`,
    /// `jsonb[]`, `bytea[]`, `time[]`, ...): travels as PostgreSQL's `to_json` of the
    /// array (`{}` is `[]`, elements keep their JSON or text form) and is stored like
    /// [`ColumnType::Json`].
    JsonArray,
    Uuid,
    /// `bytea` (travels hex-encoded).
    Bytes,
    /// An array (travels as JSON text made by PostgreSQL's `to_json`). A list of lists
    /// is a multi-dimensional array: its depth is the column's declared dimensions
    /// (`int[][]` is two), one when none are declared.
    List(Box<ColumnType>),
}

/// One column of a query result as the pipeline carries it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Column {
    pub name: Ident,
    pub ty: ColumnType,
    /// PostgreSQL's own name for the type (e.g. `numeric(38,10)`), for reports.
    pub pg_type: String,
}

impl Column {
    /// The expression that produces this column in the extraction query, over the
    /// wrapped source `pgp_src`: arrays become JSON, bytea becomes hex; with
    /// `json_number_digits`, a JSON value holding a longer number fails the extraction.
    pub fn extract_expr(&self, json_number_digits: Option<u8>, fixed_list_depth: bool) -> String {
        let plain = self.plain_expr(fixed_list_depth);
        match (&self.ty, json_number_digits) {
            (ColumnType::Json | ColumnType::JsonArray, Some(digits)) => {
                self.json_guard(&plain, digits)
            }
            _ => plain,
        }
    }

    /// A JSON value `v` of this column, or a failure naming the column when it holds a
    /// number of more than `digits` digits (counted in PostgreSQL's numeric text of
    /// the number, leading and trailing zeros included: that also catches a scale
    /// beyond 37, `0.000…1`, and `1e400`).
    fn json_guard(&self, v: &str, digits: u8) -> String {
        let refusal = self.refusal(&format!(
            "'a JSON number of more than {digits} digits, which the warehouse would store \
             rounded (as a DOUBLE); select the column as text in import_query to load it \
             exactly' || left(({v})::text, 0)"
        ));
        format!(
            "CASE WHEN EXISTS (SELECT 1 FROM jsonb_path_query(({v})::jsonb, 'strict $.** ? (@.type() == \"number\")') AS pgp_n(n) \
             WHERE length(regexp_replace(pgp_n.n::text, '[^0-9]', '', 'g')) > {digits}) \
             THEN {refusal}::text::json ELSE ({v})::json END"
        )
    }

    /// An expression that fails the extraction with `pgp refuses column <name>: ` and
    /// the text of `reason` (SQL), for the row it is evaluated on: the raise is the cast
    /// of the message to int. `reason` must depend on the row, so that the planner does
    /// not fold it (and raise) when the query is prepared; only rows that take the
    /// branch pay for it.
    fn refusal(&self, reason: &str) -> String {
        let name = self.name.as_str().replace('\'', "''");
        format!("(('pgp refuses column {name}: ' || {reason})::int)")
    }

    /// The element type and depth of a list column.
    pub fn list_depth(&self) -> Option<(&ColumnType, usize)> {
        let mut t = &self.ty;
        let mut depth = 0;
        while let ColumnType::List(e) = t {
            t = e;
            depth += 1;
        }
        (depth > 0).then_some((t, depth))
    }

    fn plain_expr(&self, fixed_list_depth: bool) -> String {
        let c = format!("pgp_src.{}", self.name.quoted());
        match (&self.ty, self.list_depth()) {
            (ColumnType::List(_), Some((e, depth))) => {
                // `numeric[]` (unconstrained): `to_json` would write its elements as
                // JSON numbers, which a warehouse reads as doubles (DuckDB, and
                // Snowflake past NUMBER(38)); as text they stay exact (the cast keeps
                // the dimensions). Only numeric: a cast to text[] changes other types
                // (char(n) loses its padding, inet gains a netmask), whose `to_json`
                // strings are already their output.
                let json = if *e == ColumnType::Text && self.pg_type == "_numeric" {
                    format!("to_json({c}::text[])")
                } else {
                    format!("to_json({c})")
                };
                self.array_guard(&c, json, fixed_list_depth.then_some(depth))
            }
            (ColumnType::JsonArray, _) => self.array_guard(&c, format!("to_json({c})"), None),
            (ColumnType::Bytes, _) => format!("encode({c}, 'hex')"),
            _ => c,
        }
    }

    /// `json`, the JSON of array column `c`, or a failure naming the column for a value
    /// that JSON or the warehouse's list would alter:
    /// - a lower bound other than 1 (`'[0:1]={a,b}'`): `to_json` drops the bounds;
    /// - with `depth` (a warehouse whose list type has a fixed depth, DuckDB), a value
    ///   of another number of dimensions. PostgreSQL does not enforce an array column's
    ///   declared dimensions, so an `int[]` column may hold `{{1,2},{3,4}}`; DuckDB
    ///   would read it into VARCHAR[] as the strings `[1,2]` and `[3,4]`, silently.
    ///   Snowflake's ARRAY holds any nesting, so there every depth is carried.
    ///
    /// The empty array has no dimensions (`array_ndims` is NULL) and passes. One-
    /// dimensional values cost two integer comparisons; the regular expression over
    /// `array_dims` runs only for multi-dimensional ones.
    fn array_guard(&self, c: &str, json: String, depth: Option<usize>) -> String {
        let bounds = format!(
            "(array_lower({c}, 1) <> 1 OR (array_ndims({c}) > 1 AND array_dims({c}) !~ '^(\\[1:[0-9]+\\])+$'))"
        );
        let name = self.name.as_str().replace('\'', "''");
        let (test, reason) = match depth {
            Some(d) => (
                format!("(array_ndims({c}) <> {d} OR {bounds})"),
                format!(
                    "CASE WHEN array_ndims({c}) <> {d} THEN 'a ' || array_ndims({c}) || \
                     '-dimensional array value, and the column is loaded as a {d}-dimensional \
                     list (its declared dimensions); declare the column''s dimensions \
                     (e.g. int[][]) or select to_json({name}) in import_query to load it as \
                     JSON' ELSE {lower} END",
                    lower = Self::bounds_reason(c, &name),
                ),
            ),
            None => (bounds, Self::bounds_reason(c, &name)),
        };
        let refusal = self.refusal(&reason);
        format!("CASE WHEN {test} THEN to_json({refusal}) ELSE {json} END")
    }

    /// Why an array value with other lower bounds is refused (SQL text).
    fn bounds_reason(c: &str, name: &str) -> String {
        format!(
            "'an array value with subscripts ' || array_dims({c}) || ', whose lower bounds JSON \
             cannot carry; select array_lower({name}, 1) and {name} with default bounds in \
             import_query to load it'"
        )
    }
}

/// The extraction projection of a list of columns (see [`Column::extract_expr`]),
/// with the record-end field last when `record_end`.
pub fn projection(
    columns: &[Column],
    json_number_digits: Option<u8>,
    fixed_list_depth: bool,
    record_end: bool,
) -> String {
    columns
        .iter()
        .map(|c| {
            format!(
                "{} AS {}",
                c.extract_expr(json_number_digits, fixed_list_depth),
                c.name.quoted()
            )
        })
        .chain(record_end.then(|| format!("1 AS \"{}\"", crate::warehouse::RECORD_END)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decode `numeric`'s type modifier into (precision, scale).
fn numeric_typmod(typmod: i32) -> Option<(i32, i32)> {
    if typmod < 4 {
        return None;
    }
    let t = typmod - 4;
    let precision = (t >> 16) & 0xffff;
    // PostgreSQL 15 allows negative scales, stored as an 11-bit signed value.
    let raw = t & 0x7ff;
    let scale = if raw & 0x400 != 0 { raw - 0x800 } else { raw };
    Some((precision, scale))
}

/// Map a PostgreSQL type (with its modifier, -1 when none) to a column type; an
/// array is one-dimensional (see [`from_pg_dims`]).
pub fn from_pg(ty: &Type, typmod: i32) -> ColumnType {
    from_pg_dims(ty, typmod, 1)
}

/// [`from_pg`] for a column declared with `dims` array dimensions (`pg_attribute.
/// attndims`: 2 for `int[][]`; 0 for a non-array, or an array without declared ones,
/// which counts as one): a list of lists of that depth.
/// PostgreSQL's `MAXDIM` bounds it at 6.
pub fn from_pg_dims(ty: &Type, typmod: i32, dims: i32) -> ColumnType {
    match from_pg_one(ty, typmod) {
        list @ ColumnType::List(_) => {
            (1..dims.min(6)).fold(list, |t, _| ColumnType::List(Box::new(t)))
        }
        t => t,
    }
}

fn from_pg_one(ty: &Type, typmod: i32) -> ColumnType {
    use ColumnType as C;
    match *ty {
        Type::BOOL => C::Boolean,
        Type::INT2 => C::SmallInt,
        Type::INT4 => C::Integer,
        Type::INT8 | Type::OID => C::BigInt,
        Type::FLOAT4 => C::Real,
        Type::FLOAT8 => C::Double,
        Type::NUMERIC => match numeric_typmod(typmod) {
            Some((p, s)) if (1..=38).contains(&p) && (0..=p).contains(&s) => C::Decimal {
                precision: p as u8,
                scale: s as u8,
            },
            _ => C::Text,
        },
        Type::DATE => C::Date,
        Type::TIME => C::Time,
        Type::TIMESTAMP => C::Timestamp,
        Type::TIMESTAMPTZ => C::TimestampTz,
        Type::JSON | Type::JSONB => C::Json,
        Type::UUID => C::Uuid,
        Type::BYTEA => C::Bytes,
        _ => match ty.kind() {
            Kind::Domain(base) => from_pg_one(base, typmod),
            Kind::Array(elem) => match from_pg_one(elem, typmod) {
                // Elements whose JSON form a warehouse list reads back exactly.
                e @ (C::Boolean
                | C::SmallInt
                | C::Integer
                | C::BigInt
                | C::Real
                | C::Double
                | C::Decimal { .. }
                | C::Text
                | C::Date
                | C::Timestamp
                | C::TimestampTz
                | C::Uuid) => C::List(Box::new(e)),
                // json[], bytea[], time[]...: the array as one JSON document.
                _ => C::JsonArray,
            },
            // enums, text-like and everything else: the exact PostgreSQL text.
            _ => C::Text,
        },
    }
}

/// Build the pipeline's columns from a prepared statement's result columns; `dims`
/// gives a column's declared array dimensions (see [`from_pg_dims`]).
pub fn columns_from_pg(
    table: &str,
    cols: &[tokio_postgres::Column],
    dims: impl Fn(&tokio_postgres::Column) -> i32,
) -> Result<Vec<Column>> {
    let mut out: Vec<Column> = Vec::with_capacity(cols.len());
    for c in cols {
        let name = Ident::parse("column", c.name()).map_err(|e| Error::Column {
            table: table.to_string(),
            column: c.name().to_string(),
            message: format!("{e}; give the column a plain alias in import_query"),
        })?;
        if out
            .iter()
            .any(|o| o.name.as_str().eq_ignore_ascii_case(name.as_str()))
        {
            return Err(Error::Column {
                table: table.to_string(),
                column: c.name().to_string(),
                message: "appears twice in the query result (warehouse names are case-insensitive)"
                    .into(),
            });
        }
        if name.as_str().eq_ignore_ascii_case(crate::UPLOADED_AT)
            || name.as_str().eq_ignore_ascii_case(crate::TASK_INSTANCE)
            || name
                .as_str()
                .eq_ignore_ascii_case(crate::warehouse::LOAD_ID)
            || name
                .as_str()
                .eq_ignore_ascii_case(crate::warehouse::RECORD_END)
        {
            return Err(Error::Column {
                table: table.to_string(),
                column: c.name().to_string(),
                message: "is a name pgp reserves for its metadata columns".into(),
            });
        }
        let ty = from_pg_dims(c.type_(), c.type_modifier(), dims(c));
        let pg_type = match (c.type_(), numeric_typmod(c.type_modifier())) {
            (&Type::NUMERIC, Some((p, s))) => format!("numeric({p},{s})"),
            (t, _) => t.name().to_string(),
        };
        out.push(Column { name, ty, pg_type });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_keeps_precision_and_scale() {
        // typmod of numeric(38,10) is ((38 << 16) | 10) + 4
        let t = ((38 << 16) | 10) + 4;
        assert_eq!(
            from_pg(&Type::NUMERIC, t),
            ColumnType::Decimal {
                precision: 38,
                scale: 10
            }
        );
    }

    #[test]
    fn unconstrained_or_too_wide_numeric_travels_as_text() {
        assert_eq!(from_pg(&Type::NUMERIC, -1), ColumnType::Text);
        assert_eq!(
            from_pg(&Type::NUMERIC, ((50 << 16) | 2) + 4),
            ColumnType::Text
        );
    }

    #[test]
    fn arrays_keep_their_element_type() {
        assert_eq!(
            from_pg(&Type::INT4_ARRAY, -1),
            ColumnType::List(Box::new(ColumnType::Integer))
        );
        assert_eq!(from_pg(&Type::JSONB_ARRAY, -1), ColumnType::JsonArray);
    }

    #[test]
    fn declared_dimensions_nest_lists_and_only_lists() {
        let list = |t| ColumnType::List(Box::new(t));
        assert_eq!(
            from_pg_dims(&Type::INT4_ARRAY, -1, 0),
            list(ColumnType::Integer)
        );
        assert_eq!(
            from_pg_dims(&Type::DATE_ARRAY, -1, 3),
            list(list(list(ColumnType::Date)))
        );
        assert_eq!(
            from_pg_dims(&Type::JSONB_ARRAY, -1, 2),
            ColumnType::JsonArray
        );
        assert_eq!(from_pg_dims(&Type::INT4, -1, 2), ColumnType::Integer);
        let c = Column {
            name: Ident::parse("column", "m").unwrap(),
            ty: from_pg_dims(&Type::INT4_ARRAY, -1, 2),
            pg_type: "_int4".into(),
        };
        assert_eq!(c.list_depth(), Some((&ColumnType::Integer, 2)));
        // DuckDB: the value's dimensions must be the column's; Snowflake: any.
        assert!(c
            .extract_expr(None, true)
            .contains("array_ndims(pgp_src.\"m\") <> 2"));
        assert!(!c.extract_expr(None, false).contains("<> 2"));
        assert!(c
            .extract_expr(None, false)
            .contains("array_lower(pgp_src.\"m\", 1) <> 1"));
    }
}
