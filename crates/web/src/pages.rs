//! Server-rendered HTML pages (minijinja templates compiled into the binary):
//! home, sign up, log in, my account. They share the account logic of the API.

use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::FormRejection;
use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use minijinja::context;
use minijinja::value::Serde;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{CurrentUser, Id, MaybeUser, freshness};
use crate::routes::accounts;
use bakery_app::Freshness;
use bakery_app::accounts::{AccountChange, Credentials, SignUp};
use bakery_app::calendar::Rsvped;
use bakery_app::catalog::ReviewDraft;
use bakery_app::media::{UPLOAD_LIMIT, accepted};
use bakery_app::pages::RenderTarget;
use bakery_core::edge::MISS_HEADER;
use bakery_session::cookie as session_cookie;
use bakery_site::format::price;
use bakery_site::prerender;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/signup", get(signup_page).post(signup_form))
        .route("/login", get(login_page).post(login_form))
        .route("/account", get(account).post(account_form))
        .route("/logout", post(logout_form))
        .route("/products", get(products_page))
        .route("/products/{id}", get(product_page))
        .route("/products/{id}/reviews", post(review_form))
        .route(
            "/products/{id}/images",
            // The photo and the form's few other bytes.
            post(photo_form).layer(DefaultBodyLimit::max(UPLOAD_LIMIT + (64 << 10))),
        )
        .route("/events", get(events_page))
        .route("/events/{id}", get(event_page))
        .route("/events/{id}/rsvp", post(rsvp_form))
        .route("/events/{id}/cancel", post(cancel_form))
        .route("/users/{username}", get(user_page))
        .route("/pages/{slug}", get(staff_page))
        .route("/assets/{name}", get(asset))
        .route("/verify-email", get(verify_email_page))
}

/// The link of a verification mail, opened in a browser (no session needed).
async fn verify_email_page(
    State(state): State<AppState>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let token = query.get("token").map(String::as_str).unwrap_or("");
    match state.app.verify_email(token).await {
        Ok(_) => render(
            &state,
            StatusCode::OK,
            "message.html",
            context! { title => "Address confirmed", message => "Thank you: your email address is confirmed, and class confirmations will reach it.", link => "/account", link_text => "Your account" },
        ),
        Err(bakery_app::Error::Invalid(_)) => render(
            &state,
            StatusCode::BAD_REQUEST,
            "message.html",
            context! { title => "This link does not work", message => "It was used already, has expired, or is for an address changed since. Your account page can send a new one when you change your address.", link => "/account", link_text => "Your account" },
        ),
        Err(e) => ApiError::from(e).into_response(),
    }
}

pub(crate) fn render(
    state: &AppState,
    status: StatusCode,
    name: &str,
    ctx: minijinja::Value,
) -> Response {
    let page = state.templates.get_template(name).and_then(|t| {
        t.render(context! { served_by => state.id(), css => prerender::css_path(), notes_js => prerender::notes_js_path(), time_js => prerender::time_js_path(), ..ctx })
    });
    match page {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => ApiError::internal(format!("template {name}: {e}")).into_response(),
    }
}

async fn home(State(state): State<AppState>, MaybeUser(current): MaybeUser) -> Response {
    let user = current.map(|c| c.user);
    render(
        &state,
        StatusCode::OK,
        "home.html",
        context! { user => user.map(|u| minijinja::Value::from(Serde(u))) },
    )
}

async fn signup_page(State(state): State<AppState>) -> Response {
    render(&state, StatusCode::OK, "signup.html", context! {})
}

async fn signup_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<SignUp>, FormRejection>,
) -> Response {
    let Ok(Form(body)) = form else {
        return render(
            &state,
            StatusCode::BAD_REQUEST,
            "signup.html",
            context! { error => "Please fill in every field." },
        );
    };
    let failed = |e: ApiError| {
        render(
            &state,
            e.status,
            "signup.html",
            context! { error => e.message, username => &body.username, email => &body.email },
        )
    };
    if let Err(e) = accounts::limit_sign_ups(&state, &headers).await {
        return failed(e);
    }
    let credentials = Credentials {
        username: body.username.clone(),
        password: body.password.clone(),
    };
    let input = SignUp {
        username: body.username.clone(),
        email: body.email.clone(),
        password: body.password.clone(),
    };
    if let Err(e) = state.app.sign_up(input).await {
        return failed(e.into());
    }
    match accounts::start_session(&state, &headers, &credentials).await {
        Ok((_, cookie)) => {
            ([(header::SET_COOKIE, cookie)], Redirect::to("/account")).into_response()
        }
        Err(e) => failed(e),
    }
}

async fn login_page(State(state): State<AppState>) -> Response {
    render(&state, StatusCode::OK, "login.html", context! {})
}

async fn login_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<Credentials>, FormRejection>,
) -> Response {
    let Ok(Form(body)) = form else {
        return render(
            &state,
            StatusCode::BAD_REQUEST,
            "login.html",
            context! { error => "Please fill in every field." },
        );
    };
    match accounts::start_session(&state, &headers, &body).await {
        Ok((_, cookie)) => {
            ([(header::SET_COOKIE, cookie)], Redirect::to("/account")).into_response()
        }
        Err(e) => render(
            &state,
            e.status,
            "login.html",
            context! { error => e.message, username => body.username },
        ),
    }
}

async fn account(
    State(state): State<AppState>,
    current: Result<CurrentUser, ApiError>,
) -> Response {
    match current {
        Ok(current) => {
            // What arrived before the page was opened is on it; the page's script
            // follows the stream from the newest one shown (`?after=`).
            let notifications = state
                .app
                .notifications(current.user.id)
                .await
                .unwrap_or_default();
            let newest = notifications.iter().map(|n| n.id).max().unwrap_or(0);
            render(
                &state,
                StatusCode::OK,
                "account.html",
                context! {
                    user => minijinja::Value::from(Serde(&current.user)),
                    notifications => Serde(&notifications),
                    newest,
                },
            )
        }
        Err(e) if e.status == StatusCode::UNAUTHORIZED => Redirect::to("/login").into_response(),
        Err(e) => e.into_response(),
    }
}

/// The account page's form: a new username and/or email (empty fields stay as they are).
async fn account_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    current: Result<CurrentUser, ApiError>,
    form: Result<Form<AccountChange>, FormRejection>,
) -> Response {
    let Ok(current) = current else {
        return Redirect::to("/login").into_response();
    };
    let Form(mut change) = form.unwrap_or_default();
    for field in [
        &mut change.username,
        &mut change.email,
        &mut change.password,
        &mut change.current_password,
    ] {
        if field.as_deref().is_some_and(|v| v.trim().is_empty()) {
            *field = None;
        }
    }
    let new_password = change.password.is_some();
    match state.app.change_account(&current.user, change).await {
        Ok(written) if new_password => {
            match accounts::end_other_sessions(&state, &headers, &written).await {
                Ok(cookie) => {
                    ([(header::SET_COOKIE, cookie)], Redirect::to("/account")).into_response()
                }
                Err(e) => e.into_response(),
            }
        }
        Ok(written) => {
            let (remembered, _) = current.remember(&state, written).await;
            (remembered, Redirect::to("/account")).into_response()
        }
        Err(e) => {
            let e = ApiError::from(e);
            let ctx = context! { user => minijinja::Value::from(Serde(&current.user)), error => e.message };
            render(&state, e.status, "account.html", ctx)
        }
    }
}

async fn logout_form(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = accounts::end_session(&state, &headers).await {
        return e.into_response();
    }
    (
        [(
            header::SET_COOKIE,
            session_cookie::clear(state.cookie_secure(&headers)),
        )],
        Redirect::to("/"),
    )
        .into_response()
}

fn user_value(current: &Option<CurrentUser>) -> Option<minijinja::Value> {
    current
        .as_ref()
        .map(|c| minijinja::Value::from(Serde(&c.user)))
}

async fn products_page(State(state): State<AppState>, MaybeUser(current): MaybeUser) -> Response {
    let after = current.as_ref().and_then(|c| c.lsn);
    match state.app.product_page(0, 100, after).await {
        Ok(products) => {
            let products: Vec<minijinja::Value> = products
                .iter()
                .map(|p| context! { id => p.id, name => &p.name, price => price(p.price_cents), rating => Serde(&p.rating), thumb_url => &p.thumb_url })
                .collect();
            render(
                &state,
                StatusCode::OK,
                "products.html",
                context! { products, user => user_value(&current) },
            )
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn show_product(
    state: &AppState,
    current: &Option<CurrentUser>,
    id: i64,
    error: Option<String>,
    freshness: Freshness,
) -> Response {
    show_product_with(state, current, id, error, freshness, "").await
}

/// The product page with `typed` back in the review field (a refused review keeps
/// what its author wrote).
async fn show_product_with(
    state: &AppState,
    current: &Option<CurrentUser>,
    id: i64,
    error: Option<String>,
    freshness: Freshness,
    typed: &str,
) -> Response {
    let after = current.as_ref().and_then(|c| c.lsn);
    match state.app.product(id, after, freshness).await {
        Ok(Some(product)) => {
            let status = if error.is_some() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            };
            let ctx = context! { price => price(product.price_cents), product => Serde(&product), user => user_value(current), error, typed };
            render(state, status, "product.html", ctx)
        }
        Ok(None) => ApiError::not_found().into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn product_page(
    State(state): State<AppState>,
    MaybeUser(current): MaybeUser,
    Id(id): Id,
    headers: HeaderMap,
) -> Response {
    let response = show_product(&state, &current, id, None, freshness(&headers)).await;
    // The edge had no page for this anonymous view: have one rendered (Next.js's
    // incremental static regeneration), after answering this request live.
    if current.is_none() && response.status() == StatusCode::OK && headers.contains_key(MISS_HEADER)
    {
        let app = state.app.clone();
        tokio::spawn(async move {
            if let Err(error) = app.render_missed(RenderTarget::Product(id)).await {
                tracing::warn!(%error, product = id, "cannot queue the product page's render");
            }
        });
    }
    response
}

/// A staff page rendered live: what the edge answers once the page's render job
/// has run, and what a clone answers before that.
async fn staff_page(State(state): State<AppState>, Path(slug): Path<String>) -> Response {
    if !bakery_core::edge::valid_slug(&slug) {
        return ApiError::not_found().into_response();
    }
    match state.app.page(&slug).await {
        Ok(Some(page)) => match prerender::page_html(&state.templates, &page) {
            Ok(html) => Html(html).into_response(),
            Err(e) => ApiError::internal(format!("template page.html: {e}")).into_response(),
        },
        Ok(None) => ApiError::not_found().into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The site's content-hashed assets (the edge serves them too).
async fn asset(Path(name): Path<String>) -> Response {
    let Some(asset) = prerender::asset(&format!("/assets/{name}")) else {
        return ApiError::not_found().into_response();
    };
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        asset.body,
    )
        .into_response()
}

async fn review_form(
    State(state): State<AppState>,
    current: Result<CurrentUser, ApiError>,
    Id(id): Id,
    form: Result<Form<ReviewDraft>, FormRejection>,
) -> Response {
    let Ok(current) = current else {
        return Redirect::to("/login").into_response();
    };
    let Ok(Form(draft)) = form else {
        let message = "Please choose a rating and write a review.".to_string();
        return show_product(
            &state,
            &Some(current),
            id,
            Some(message),
            Freshness::Current,
        )
        .await;
    };
    let typed = draft.body.clone();
    match state.app.add_review(&current.user, id, draft).await {
        Ok(written) => {
            let (remembered, _) = current.remember(&state, written).await;
            (remembered, Redirect::to(&format!("/products/{id}"))).into_response()
        }
        Err(bakery_app::Error::Invalid(invalid)) => {
            show_product_with(
                &state,
                &Some(current),
                id,
                Some(invalid.message),
                Freshness::Current,
                &typed,
            )
            .await
        }
        // One review each: said on the page, with what was typed kept.
        Err(bakery_app::Error::Conflict { message, .. }) => {
            show_product_with(
                &state,
                &Some(current),
                id,
                Some(message.to_string()),
                Freshness::Current,
                &typed,
            )
            .await
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The product page's photo form (admins): the same operation as
/// `POST /api/products/{id}/images`, from a browser's multipart form. Who may upload
/// is decided before the body is read.
async fn photo_form(
    State(state): State<AppState>,
    current: Result<CurrentUser, ApiError>,
    Id(id): Id,
    form: Result<Multipart, MultipartRejection>,
) -> Response {
    let Ok(current) = current else {
        return crate::error::before_the_body(Redirect::to("/login").into_response());
    };
    if let Err(e) = state.app.require_admin(&current.user).await {
        return crate::error::before_the_body(ApiError::from(e).into_response());
    }
    let refused = match photo_of(form).await {
        Ok((format, bytes)) => match state
            .app
            .upload_image(&current.user, id, format, bytes)
            .await
        {
            Ok(written) => {
                let (remembered, _) = current.remember(&state, written).await;
                return (remembered, Redirect::to(&format!("/products/{id}"))).into_response();
            }
            Err(bakery_app::Error::Invalid(invalid)) => invalid.message,
            Err(bakery_app::Error::Unprocessable { message, .. }) => message,
            Err(e) => return ApiError::from(e).into_response(),
        },
        Err(message) => message,
    };
    show_product(
        &state,
        &Some(current),
        id,
        Some(refused),
        Freshness::Current,
    )
    .await
}

/// The `photo` part of a photo form: its type and bytes, or what to tell the user.
async fn photo_of(
    form: Result<Multipart, MultipartRejection>,
) -> Result<(bakery_app::media::ImageFormat, axum::body::Bytes), String> {
    const CHOOSE: &str = "Choose a PNG or JPEG photo to upload.";
    let mut form = form.map_err(|_| CHOOSE.to_string())?;
    while let Ok(Some(field)) = form.next_field().await {
        if field.name() != Some("photo") {
            continue;
        }
        let content_type = field.content_type().unwrap_or_default().to_string();
        let bytes = field
            .bytes()
            .await
            .map_err(|_| format!("A photo is at most {} MiB.", UPLOAD_LIMIT >> 20))?;
        if bytes.is_empty() {
            break;
        }
        let format = accepted(&content_type).ok_or("A photo is a PNG or a JPEG image.")?;
        return Ok((format, bytes));
    }
    Err(CHOOSE.to_string())
}

/// A user's profile and their latest 100 reviews.
async fn user_page(
    State(state): State<AppState>,
    current: MaybeUser,
    Path(username): Path<String>,
) -> Response {
    let shown = async {
        let profile = crate::routes::users::find(&state, &current, &username).await?;
        let after = current.0.as_ref().and_then(|c| c.lsn);
        let reviews = state
            .app
            .user_reviews(profile.id, i64::MAX, 100, after)
            .await?;
        Ok::<_, ApiError>((profile, reviews))
    };
    match shown.await {
        Ok((profile, reviews)) => {
            let ctx = context! { profile => Serde(&profile), reviews => Serde(&reviews), user => user_value(&current.0) };
            render(&state, StatusCode::OK, "user.html", ctx)
        }
        Err(e) => e.into_response(),
    }
}

async fn events_page(State(state): State<AppState>, MaybeUser(current): MaybeUser) -> Response {
    match state.app.events(current.as_ref().and_then(|c| c.lsn)).await {
        Ok(events) => render(
            &state,
            StatusCode::OK,
            "events.html",
            context! { events => Serde(&events), user => user_value(&current) },
        ),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn show_event(
    state: &AppState,
    current: &Option<CurrentUser>,
    id: i64,
    error: Option<&str>,
) -> Response {
    let (user_id, after) = current
        .as_ref()
        .map(|c| (Some(c.user.id), c.lsn))
        .unwrap_or((None, None));
    match state.app.event(id, user_id, after).await {
        Ok(event) => {
            let status = if error.is_some() {
                StatusCode::CONFLICT
            } else {
                StatusCode::OK
            };
            render(
                state,
                status,
                "event.html",
                context! { event => Serde(&event), user => user_value(current), error },
            )
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn event_page(
    State(state): State<AppState>,
    MaybeUser(current): MaybeUser,
    Id(id): Id,
) -> Response {
    show_event(&state, &current, id, None).await
}

async fn rsvp_form(
    State(state): State<AppState>,
    current: Result<CurrentUser, ApiError>,
    Id(id): Id,
) -> Response {
    let Ok(current) = current else {
        return Redirect::to("/login").into_response();
    };
    match state.app.rsvp(&current.user, id).await {
        Ok(written) => {
            let (remembered, Rsvped::Created(_) | Rsvped::Existing(_)) =
                current.remember(&state, written).await;
            (remembered, Redirect::to(&format!("/events/{id}"))).into_response()
        }
        Err(bakery_app::Error::Conflict { .. }) => {
            show_event(
                &state,
                &Some(current),
                id,
                Some("Sorry, every seat is taken."),
            )
            .await
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The same operation as `DELETE /api/events/{id}/rsvp`, so both leave the same state.
async fn cancel_form(
    State(state): State<AppState>,
    current: Result<CurrentUser, ApiError>,
    Id(id): Id,
) -> Response {
    let Ok(current) = current else {
        return Redirect::to("/login").into_response();
    };
    match state.app.cancel_rsvp(&current.user, id).await {
        Ok(written) => {
            let (remembered, _) = current.remember(&state, written).await;
            (remembered, Redirect::to(&format!("/events/{id}"))).into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}
