//! User profiles: what the notification and stats consumers need to know about a user.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{Dialect, Result, Store};
use firstcome_core::clock::now_ms;

/// A user's contact details and demographics, set through the admin API.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct UserProfile {
    pub user_id: String,
    pub email: Option<String>,
    pub fcm_token: Option<String>,
    pub gender: Option<String>,
    pub age_group: Option<String>,
}

pub(super) fn profile_from_row(r: &sqlx::any::AnyRow) -> Result<UserProfile> {
    Ok(UserProfile {
        user_id: r.try_get(0)?,
        email: r.try_get(1)?,
        fcm_token: r.try_get(2)?,
        gender: r.try_get(3)?,
        age_group: r.try_get(4)?,
    })
}

impl Store {
    /// Inserts or replaces profiles, all in one transaction.
    pub async fn upsert_users(&self, users: &[UserProfile]) -> Result<()> {
        let upsert = match self.dialect {
            Dialect::MySql => {
                "INSERT INTO users (id, email, fcm_token, gender, age_group, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE email = VALUES(email), \
                 fcm_token = VALUES(fcm_token), gender = VALUES(gender), \
                 age_group = VALUES(age_group), updated_at = VALUES(updated_at)"
            }
            Dialect::Sqlite | Dialect::Postgres => {
                "INSERT INTO users (id, email, fcm_token, gender, age_group, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET \
                 email = excluded.email, fcm_token = excluded.fcm_token, \
                 gender = excluded.gender, age_group = excluded.age_group, \
                 updated_at = excluded.updated_at"
            }
        };
        let upsert = self.sql(upsert);
        let now = now_ms();
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        for u in users {
            sqlx::query(&upsert)
                .bind(&u.user_id)
                .bind(&u.email)
                .bind(&u.fcm_token)
                .bind(&u.gender)
                .bind(&u.age_group)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn user(&self, user_id: &str) -> Result<Option<UserProfile>> {
        let row = sqlx::query(
            &self.sql("SELECT id, email, fcm_token, gender, age_group FROM users WHERE id = ?"),
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(profile_from_row).transpose()
    }

    pub async fn count_users(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }
}
