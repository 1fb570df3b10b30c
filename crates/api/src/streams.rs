//! Server-sent events: a campaign's live statistics, and one user's request until it is
//! issued. Both send a keep-alive comment every 15 s.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};

use super::error::{ApiError, ApiPath, ErrorBody};
use super::requests::{CampaignParam, Status, UserParam, readable, status_of};
use super::schema::{StatsEvent, StatusEvent};
use super::shoppers::{Client, Shopper, StreamPermit};
use firstcome_platform::Platform;
use firstcome_platform::live::{FALLBACK, Feeds};

const KEEP_ALIVE: Duration = Duration::from_secs(15);

fn json_event(name: &str, data: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .json_data(data)
        .unwrap_or_else(|_| Event::default().comment("unserialisable"))
}

/// Ends `stream` after `lifetime` (the client reconnects) or when the host shuts down, and
/// holds `permit` (the stream's place under the per-address and per-shopper caps) while it
/// runs.
fn bounded<S: Stream + Send + 'static>(
    stream: S,
    permit: StreamPermit,
    lifetime: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> impl Stream<Item = S::Item> + Send + 'static {
    stream
        .take_until(tokio::time::sleep(lifetime))
        .take_until(stop.cancelled_owned())
        .map(move |item| {
            let _ = &permit;
            item
        })
}

/// The campaign's live statistics as server-sent events: `stats` events whose data is a
/// `LiveStats` document, the current snapshot first, then one per change (at most one per
/// 250 ms; a slow client skips to the latest). A comment every 15 s keeps the connection
/// alive; the stream ends after `limits.stream_max_lifetime_s` (reconnect) or when the host
/// shuts down. Only with the admin bearer token, or when the campaign sets
/// `public_stats = true`.
#[utoipa::path(
    get,
    path = "/campaigns/{campaign_id}/stats/stream",
    operation_id = "streamCampaignStats",
    tag = "streams",
    params(CampaignParam),
    security((), ("admin_token" = [])),
    responses(
        (status = 200, description = "A stream of `stats` events",
            content_type = "text/event-stream", body = StatsEvent),
        (status = 404, description = "`unknown_campaign`, or `private_stats`: its statistics need the admin token", body = ErrorBody),
        (status = 429, description = "`too_many_streams`: this address has its cap of streams open", body = ErrorBody),
    )
)]
pub async fn stats(
    State(platform): State<Arc<Platform>>,
    client: Client,
    operator: super::operators::OperatorIfAny,
    ApiPath(campaign_id): ApiPath<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let c = super::campaigns::stats_visible(&platform, &operator, &campaign_id)?;
    let permit = client.open_stream()?;
    let rx = Feeds::subscribe(&platform, c).await.map_err(|e| {
        tracing::warn!(error = %e, "cannot read live statistics");
        ApiError::internal(&e)
    })?;
    let stop = platform.shutdown_token();
    let stream = futures::stream::unfold((rx, true), |(mut rx, first)| async move {
        if !first && rx.changed().await.is_err() {
            return None;
        }
        let frame = rx.borrow_and_update().clone();
        let event = Event::default().event("stats").data(frame.json.as_str());
        Some((Ok(event), (rx, false)))
    });
    // Streams end when the host shuts down, so that a graceful shutdown does not wait on them.
    let stream = bounded(stream, permit, client.stream_lifetime(), stop);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// One user's request as server-sent events: `status` events (a `Status` document) as it
/// moves, `queued` with its position, then `issued` with the coupon, and then the stream ends.
/// It ends at once with `none` when the user has no request.
#[utoipa::path(
    get,
    path = "/campaigns/{campaign_id}/requests/{user_id}/stream",
    operation_id = "streamRequest",
    tag = "streams",
    params(CampaignParam, UserParam),
    security((), ("shopper_jwt" = []), ("shopper_signed_header" = [])),
    responses(
        (status = 200, description = "`status` events until the request is issued",
            content_type = "text/event-stream", body = StatusEvent),
        (status = 404, description = "`unknown_campaign`, or `unknown_user`: another shopper than the credential's", body = ErrorBody),
        (status = 422, description = "`invalid_user_id`", body = ErrorBody),
        (status = 429, description = "`too_many_streams`: this address or shopper has its cap of streams open", body = ErrorBody),
        (status = 503, description = "`unavailable`: the admission queue is down", body = ErrorBody),
    )
)]
pub async fn request(
    State(platform): State<Arc<Platform>>,
    shopper: Shopper,
    ApiPath((campaign_id, user_id)): ApiPath<(String, String)>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let user = shopper.reading(&user_id)?;
    readable(&platform, &campaign_id)?;
    let permit = shopper.open_stream(Some(&user))?;
    let changes = platform.subscribe_changes(&campaign_id);
    let first = status_of(&platform, &campaign_id, &user).await?;
    let stop = platform.shutdown_token();
    let state = (
        platform,
        campaign_id,
        user,
        changes,
        Some(first),
        None::<Status>,
    );
    let stream = futures::stream::unfold(state, |state| async move {
        let (platform, campaign_id, user, mut changes, mut next, last) = state;
        loop {
            // After a final status has been sent, the stream ends.
            if last.as_ref().is_some_and(Status::is_final) {
                return None;
            }
            if let Some(status) = next.take()
                && last.as_ref() != Some(&status)
            {
                let event = json_event("status", &status);
                return Some((
                    Ok(event),
                    (platform, campaign_id, user, changes, None, Some(status)),
                ));
            }
            tokio::select! {
                _ = changes.changed() => {}
                () = tokio::time::sleep(FALLBACK) => {}
            }
            next = Some(status_of(&platform, &campaign_id, &user).await.ok()?);
        }
    });
    let stream = bounded(stream, permit, shopper.stream_lifetime(), stop);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}
