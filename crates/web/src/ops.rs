//! `/ops`, the operations page (admins, on the public site behind their login: the
//! figures come from internal addresses a browser cannot reach, so a clone gathers
//! them; see ARCHITECTURE.md). The page shows a picture of the whole system and,
//! given a request id, that request's journey; `/ops/live` sends a new picture
//! every second as HTML, rendered with the same template, which the page's script
//! swaps in.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use bakery_db::journey::Hop;
use bakery_site::prerender;
use minijinja::context;
use minijinja::value::Serde;
use serde::Serialize;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::CurrentUser;
use crate::pages::render;

/// How often the live page gets a new picture.
const EVERY: Duration = Duration::from_secs(1);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ops", get(page))
        .route("/ops/live", get(live))
}

/// An admin, or the answer for whoever else asked: a visitor is sent to log in, a
/// user who is not an admin gets 403.
async fn admin(
    state: &AppState,
    current: Result<CurrentUser, ApiError>,
) -> Result<CurrentUser, Response> {
    match current {
        Ok(current) => match state.app.require_admin(&current.user).await {
            Ok(()) => Ok(current),
            Err(e) => Err(ApiError::from(e).into_response()),
        },
        Err(e) if e.status == StatusCode::UNAUTHORIZED => {
            Err(Redirect::to("/login").into_response())
        }
        Err(e) => Err(e.into_response()),
    }
}

/// One hop as the page draws it: its time from the first hop, and its particulars.
#[derive(Serialize)]
struct DrawnHop {
    offset_ms: i64,
    process: String,
    /// The process's role (its id's stem: `web-2` → `web`), for its colour.
    role: String,
    what: String,
    detail: String,
}

fn drawn(hops: &[Hop]) -> Vec<DrawnHop> {
    let first = hops.first().map_or(0, |hop| hop.at);
    hops.iter()
        .map(|hop| DrawnHop {
            offset_ms: hop.at - first,
            role: hop
                .process
                .rsplit_once('-')
                .map_or(hop.process.as_str(), |(stem, _)| stem)
                .to_string(),
            process: hop.process.clone(),
            what: hop.what.clone(),
            detail: hop
                .detail
                .iter()
                .filter(|(_, value)| !value.is_null())
                .map(|(key, value)| match value {
                    serde_json::Value::String(text) => format!("{key}={text}"),
                    other => format!("{key}={other}"),
                })
                .collect::<Vec<_>>()
                .join(" "),
        })
        .collect()
}

async fn page(
    State(state): State<AppState>,
    current: Result<CurrentUser, ApiError>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let current = match admin(&state, current).await {
        Ok(current) => current,
        Err(answer) => return answer,
    };
    let journey_id = query
        .get("journey")
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty());
    let (picture, hops) = tokio::join!(state.ops.snapshot(), async {
        match &journey_id {
            Some(id) => state.app.journey(id).await.unwrap_or_default(),
            None => Vec::new(),
        }
    });
    render(
        &state,
        StatusCode::OK,
        "ops.html",
        context! {
            user => Serde(&current.user),
            s => Serde(&picture),
            journey_id,
            hops => Serde(drawn(&hops)),
            live_js => prerender::ops_js_path(),
        },
    )
}

/// A new picture every second, with the rates since the one before, as the HTML
/// of the page's live part; ends with the session.
async fn live(State(state): State<AppState>, current: Result<CurrentUser, ApiError>) -> Response {
    let current = match admin(&state, current).await {
        Ok(current) => current,
        Err(answer) => return answer,
    };
    let pictures = futures::stream::unfold(
        (state, current, None::<bakery_ops::Snapshot>),
        |(state, current, previous)| async move {
            if previous.is_some() {
                tokio::time::sleep(EVERY).await;
                if !state
                    .sessions
                    .is_live(&current.session)
                    .await
                    .unwrap_or(true)
                {
                    return None;
                }
            }
            let mut picture = state.ops.snapshot().await;
            if let Some(previous) = &previous {
                picture = picture.with_rates_since(previous);
            }
            let html = state
                .templates
                .get_template("ops_live.html")
                .and_then(|t| t.render(context! { s => Serde(&picture) }))
                .unwrap_or_else(|e| format!("<p class=\"error\">cannot draw the picture: {e}</p>"));
            let event = Event::default().event("picture").data(html);
            Some((Ok::<_, Infallible>(event), (state, current, Some(picture))))
        },
    );
    Sse::new(pictures)
        .keep_alive(KeepAlive::default())
        .into_response()
}
