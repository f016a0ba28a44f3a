//! `WebhookAdmin`: operators list parked events and put them back in line.

use crate::{Outbox, migration::Outbox as Col};
use sea_orm::{
    ConnectionTrait, DatabaseConnection,
    sea_query::{Expr, ExprTrait, Query},
};
use tern_proto::pb::webhook::{
    EventRef, ListParkedRequest, ListParkedResponse, ParkedEvent, RetryParkedRequest,
    RetryParkedResponse, webhook_admin_server::WebhookAdmin,
};
use tonic::{Request, Response, Status};

/// The admin API of one outbox (a service's), or of several (the
/// all-in-one server's).
#[derive(Clone, Default)]
pub struct Admin {
    outboxes: Vec<(Outbox, DatabaseConnection)>,
}

impl Admin {
    /// Also answers for `outbox`, kept in `db`.
    pub fn with(mut self, outbox: Outbox, db: DatabaseConnection) -> Self {
        self.outboxes.push((outbox, db));
        self
    }

    /// Also answers for `other`'s outboxes.
    pub fn and(mut self, other: Admin) -> Self {
        self.outboxes.extend(other.outboxes);
        self
    }
}

fn storage(error: sea_orm::DbErr) -> Status {
    tracing::error!(%error, "webhook outbox");
    Status::unavailable("the webhook outbox cannot be read right now")
}

#[tonic::async_trait]
impl WebhookAdmin for Admin {
    async fn list_parked(
        &self,
        request: Request<ListParkedRequest>,
    ) -> Result<Response<ListParkedResponse>, Status> {
        let limit = match request.into_inner().limit {
            0 => 100,
            n => std::cmp::min(n, 1000),
        };
        let mut events = Vec::new();
        for (outbox, db) in &self.outboxes {
            let mut select = Query::select();
            select
                .columns([
                    Col::Id,
                    Col::EventId,
                    Col::EventType,
                    Col::Endpoint,
                    Col::Attempts,
                    Col::LastError,
                    Col::CreatedMs,
                    Col::Body,
                ])
                .from(Col::table(&outbox.inner.table))
                .and_where(Expr::col(Col::Parked).eq(true))
                .order_by(Col::Id, sea_orm::Order::Asc)
                .limit(u64::from(limit));
            let rows = db.query_all(&select).await.map_err(storage)?;
            for row in &rows {
                let event = || -> Result<ParkedEvent, sea_orm::DbErr> {
                    Ok(ParkedEvent {
                        r#ref: Some(EventRef {
                            outbox: outbox.inner.name.clone(),
                            id: row.try_get("", "id")?,
                        }),
                        event_id: row.try_get("", "event_id")?,
                        event_type: row.try_get("", "event_type")?,
                        endpoint: row.try_get("", "endpoint")?,
                        attempts: u32::try_from(row.try_get::<i32>("", "attempts")?).unwrap_or(0),
                        last_error: row
                            .try_get::<Option<String>>("", "last_error")?
                            .unwrap_or_default(),
                        created_at_ms: row.try_get("", "created_ms")?,
                        body: row.try_get("", "body")?,
                    })
                };
                events.push(event().map_err(storage)?);
            }
        }
        // Oldest first across outboxes.
        events.sort_by_key(|e| e.created_at_ms);
        events.truncate(limit as usize);
        Ok(Response::new(ListParkedResponse { events }))
    }

    async fn retry_parked(
        &self,
        request: Request<RetryParkedRequest>,
    ) -> Result<Response<RetryParkedResponse>, Status> {
        let refs = request.into_inner().events;
        if refs.len() > 1000 {
            return Err(Status::invalid_argument("retry at most 1000 events at a time"));
        }
        let mut retried = 0;
        for (outbox, db) in &self.outboxes {
            let ids: Vec<i64> =
                refs.iter().filter(|r| r.outbox == outbox.inner.name).map(|r| r.id).collect();
            if ids.is_empty() {
                continue;
            }
            let mut update = Query::update();
            update
                .table(Col::table(&outbox.inner.table))
                .values([
                    (Col::Parked, false.into()),
                    (Col::Attempts, 0i32.into()),
                    (Col::NextAttemptMs, tern_runtime::clock::now_ms().into()),
                ])
                .and_where(Expr::col(Col::Parked).eq(true))
                .and_where(Expr::col(Col::Id).is_in(ids));
            let done = db.execute(&update).await.map_err(storage)?;
            retried += done.rows_affected() as u32;
            outbox.wake();
        }
        Ok(Response::new(RetryParkedResponse { retried }))
    }
}
