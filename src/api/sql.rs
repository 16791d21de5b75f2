//! A tiny SQL builder: text with numbered placeholders and text arguments (cast in SQL).

use serde_json::Value;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{PgConnection, Postgres, Row};

/// SQL text plus its arguments, all bound as text (`$n::uuid`, `$n::timestamptz` in the text).
#[derive(Debug, Clone, Default)]
pub struct Sql {
    pub text: String,
    args: Vec<Option<String>>,
}

impl Sql {
    pub fn new(text: impl Into<String>) -> Sql {
        Sql {
            text: text.into(),
            args: Vec::new(),
        }
    }

    /// Appends SQL text.
    pub fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }

    /// Adds an argument and returns its placeholder.
    pub fn arg(&mut self, v: impl Into<Option<String>>) -> String {
        self.args.push(v.into());
        format!("${}", self.args.len())
    }

    /// The same arguments under other text (a count over the same WHERE clause).
    pub fn with_text(&self, text: String) -> Sql {
        Sql {
            text,
            args: self.args.clone(),
        }
    }

    fn query(&self) -> Query<'_, Postgres, PgArguments> {
        let mut q = sqlx::query(&self.text);
        for a in &self.args {
            q = q.bind(a.clone());
        }
        q
    }

    /// Rows whose first column is a JSON value.
    pub async fn json_rows(&self, conn: &mut PgConnection) -> Result<Vec<Value>, sqlx::Error> {
        let rows = self.query().fetch_all(conn).await?;
        rows.iter().map(|r| r.try_get::<Value, _>(0)).collect()
    }

    /// At most one row whose first column is a JSON value.
    pub async fn json_row(&self, conn: &mut PgConnection) -> Result<Option<Value>, sqlx::Error> {
        let row = self.query().fetch_optional(conn).await?;
        row.map(|r| r.try_get::<Value, _>(0)).transpose()
    }

    /// A single bigint.
    pub async fn count(&self, conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
        let row = self.query().fetch_one(conn).await?;
        row.try_get::<i64, _>(0)
    }
}

/// A quoted identifier (names come from the static resource table; quoted anyway).
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
