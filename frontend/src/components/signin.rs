//! The admin's sign-in, on every admin page: a page opened without the admin token (or with one
//! the server refuses) shows this one form instead of a raw error per request it would make. The
//! token is kept where `api` keeps the one from an `#admin=…` link (local storage), and the page
//! loads once the server accepts it; a refusal says why in plain words.

use leptos::prelude::*;

use crate::api::{self, Failure};

/// Why the form is shown again after a token was tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The server does not know the token.
    Wrong,
    /// The token is a rater's invite token, not the admin's.
    RaterToken,
}

impl Refused {
    /// The refusal an admin call's failure means, if it is one (401, or 403 for a rater's
    /// token); other failures are the page's to show.
    pub fn of(f: &Failure) -> Option<Self> {
        match f.status {
            Some(401) => Some(Self::Wrong),
            Some(403) => Some(Self::RaterToken),
            _ => None,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Self::Wrong => {
                "The server did not accept that admin token. Paste the whole token from the admin link the \
                 server printed (the part after #admin=), or print a new one with apl serve --reset-admin-token."
            }
            Self::RaterToken => {
                "That is a rater's invite token, not the admin token. Paste the token from the admin link the \
                 server printed (the part after #admin=)."
            }
        }
    }
}

/// Forgets the stored admin token if `f` says it was refused; returns the refusal.
pub fn refused(f: &Failure) -> Option<Refused> {
    let r = Refused::of(f);
    if r.is_some() {
        api::set_admin_token(None);
    }
    r
}

/// The sign-in form: stores the token pasted and calls `on_set`, which loads the page (and
/// shows the form again with `refused` set if the server says no).
#[component]
pub fn SignIn(#[prop(into)] refused: Signal<Option<Refused>>, on_set: impl Fn() + Copy + 'static) -> impl IntoView {
    let token = RwSignal::new(String::new());
    view! {
        <section class="card signin">
            <h2>"Sign in as admin"</h2>
            <p>"Open the admin link the server printed on first start (it ends in " <code>"#admin=…"</code>
               "), or paste its token here. " <code>"apl serve --reset-admin-token"</code> " prints a new one."</p>
            <form class="row signin" on:submit=move |e| {
                e.prevent_default();
                let t = token.get_untracked();
                if !t.trim().is_empty() {
                    api::set_admin_token(Some(t.trim()));
                    token.set(String::new());
                    on_set();
                }
            }>
                <label class="field">
                    <span>"Admin token"</span>
                    <input type="password" name="admin-token" autocomplete="off" required
                        aria-invalid=move || refused.get().is_some().to_string()
                        aria-describedby="signin-error"
                        prop:value=move || token.get() on:input=move |e| token.set(event_target_value(&e))/>
                </label>
                <button class="primary" type="submit">"Sign in"</button>
            </form>
            <p id="signin-error" class="error" role="alert">{move || refused.get().map(Refused::message)}</p>
        </section>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_of_the_token_ask_for_it_again() {
        let f = |status| Failure { status, message: String::new() };
        assert_eq!(Refused::of(&f(Some(401))), Some(Refused::Wrong));
        assert_eq!(Refused::of(&f(Some(403))), Some(Refused::RaterToken));
        for other in [None, Some(404), Some(429), Some(500)] {
            assert_eq!(Refused::of(&f(other)), None, "{other:?}");
        }
        assert!(Refused::Wrong.message().contains("did not accept"));
    }
}
