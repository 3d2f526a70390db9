//! Server-rendered HTML pages (minijinja templates compiled into the binary):
//! home, sign up, log in, my account. They share the account logic of the API.

use axum::extract::rejection::FormRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use minijinja::value::Serde;
use minijinja::{Environment, context};

use crate::error::ApiError;
use crate::extract::{CurrentUser, MaybeUser};
use crate::routes::accounts::{self, Credentials, SignUp};
use crate::{AppState, session_cookie};

/// The templates, parsed once per process.
pub fn templates() -> Environment<'static> {
    let mut env = Environment::new();
    for (name, source) in [
        ("base.html", include_str!("../templates/base.html")),
        ("home.html", include_str!("../templates/home.html")),
        ("signup.html", include_str!("../templates/signup.html")),
        ("login.html", include_str!("../templates/login.html")),
        ("account.html", include_str!("../templates/account.html")),
    ] {
        env.add_template(name, source).expect("the bundled templates parse");
    }
    env
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/signup", get(signup_page).post(signup_form))
        .route("/login", get(login_page).post(login_form))
        .route("/account", get(account))
        .route("/logout", post(logout_form))
}

fn render(state: &AppState, status: StatusCode, name: &str, ctx: minijinja::Value) -> Response {
    let page = state
        .templates
        .get_template(name)
        .and_then(|t| t.render(context! { served_by => &*state.id, ..ctx }));
    match page {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => ApiError::internal(format!("template {name}: {e}")).into_response(),
    }
}

async fn home(State(state): State<AppState>, MaybeUser(current): MaybeUser) -> Response {
    let user = current.map(|c| c.user);
    render(&state, StatusCode::OK, "home.html", context! { user => user.map(|u| minijinja::Value::from(Serde(u))) })
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
        return render(&state, StatusCode::BAD_REQUEST, "signup.html", context! { error => "Please fill in every field." });
    };
    let failed = |e: ApiError| {
        render(&state, e.status, "signup.html", context! { error => e.message, username => &body.username, email => &body.email })
    };
    if let Err(e) = accounts::create_account(&state, &body).await {
        return failed(e);
    }
    let credentials = Credentials { username: body.username.clone(), password: body.password.clone() };
    match accounts::start_session(&state, &headers, &credentials).await {
        Ok((_, cookie)) => ([(header::SET_COOKIE, cookie)], Redirect::to("/account")).into_response(),
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
        return render(&state, StatusCode::BAD_REQUEST, "login.html", context! { error => "Please fill in every field." });
    };
    match accounts::start_session(&state, &headers, &body).await {
        Ok((_, cookie)) => ([(header::SET_COOKIE, cookie)], Redirect::to("/account")).into_response(),
        Err(e) => render(&state, e.status, "login.html", context! { error => e.message, username => body.username }),
    }
}

async fn account(State(state): State<AppState>, current: Result<CurrentUser, ApiError>) -> Response {
    match current {
        Ok(current) => render(&state, StatusCode::OK, "account.html", context! { user => minijinja::Value::from(Serde(&current.user)) }),
        Err(e) if e.status == StatusCode::UNAUTHORIZED => Redirect::to("/login").into_response(),
        Err(e) => e.into_response(),
    }
}

async fn logout_form(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = accounts::end_session(&state, &headers).await {
        return e.into_response();
    }
    ([(header::SET_COOKIE, session_cookie::clear(state.cookie_secure(&headers)))], Redirect::to("/")).into_response()
}
