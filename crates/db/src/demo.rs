//! The demo bakery loaded on first start, so a newcomer sees something at once:
//! a dozen products with reviews, a few baking classes.

use bakery_core::{Password, hash_password};

use crate::accounts::NewUser;
use crate::calendar::NewEvent;
use crate::catalog::NewProduct;
use crate::{Database, DbError, now_millis};

const PRODUCTS: &[(&str, &str, i64)] = &[
    (
        "Country sourdough",
        "A slow-fermented loaf with a blistered crust and an open, tangy crumb.",
        650,
    ),
    (
        "Seeded rye",
        "Dense Nordic rye with sunflower, flax and pumpkin seeds.",
        720,
    ),
    ("Baguette", "Crisp, thin crust; baked every two hours.", 290),
    (
        "Butter croissant",
        "Laminated by hand with cultured butter.",
        310,
    ),
    (
        "Pain au chocolat",
        "Two bars of dark chocolate in croissant dough.",
        350,
    ),
    (
        "Cinnamon bun",
        "Cardamom dough, cinnamon butter, pearl sugar.",
        380,
    ),
    ("Focaccia", "Olive oil, rosemary and flaky salt.", 540),
    (
        "Brioche loaf",
        "Rich, soft and golden; perfect for French toast.",
        690,
    ),
    (
        "Fruit tart",
        "Almond cream and seasonal fruit in a sweet crust.",
        480,
    ),
    (
        "Carrot cake",
        "Walnuts, warm spices and cream-cheese frosting.",
        520,
    ),
    (
        "Lemon drizzle",
        "A tender loaf cake soaked in lemon syrup.",
        450,
    ),
    (
        "Birthday cake",
        "Made to order: tell us the flavour and the name.",
        3500,
    ),
];

const REVIEWERS: &[&str] = &["flour_fan", "crumb_critic", "yeast_beast"];

const REVIEWS: &[(i64, &str)] = &[
    (5, "Best loaf in town. The crust sings when it cools."),
    (4, "Lovely, though I wish it came in a larger size."),
    (5, "Gone before I got home. Will buy two next time."),
    (3, "Good, but a little dark for my taste."),
];

const CLASSES: &[(&str, &str, i64, i64)] = &[
    (
        "Sourdough from scratch",
        "Feed a starter, shape a loaf, bake it. Bring an apron.",
        7,
        12,
    ),
    (
        "Laminated doughs",
        "Croissants and pains au chocolat, fold by fold.",
        14,
        8,
    ),
    (
        "Cake decorating for beginners",
        "Buttercream, piping bags and steady hands.",
        21,
        10,
    ),
];

impl Database {
    /// Loads the demo bakery when the catalog is empty; returns whether it did.
    pub async fn load_demo(&self) -> Result<bool, DbError> {
        if self.has_products().await? {
            return Ok(false);
        }
        let mut reviewers = Vec::new();
        for name in REVIEWERS {
            // Nobody knows these passwords: demo reviewers only lend their names.
            let secret = format!("{:032x}", rand::random::<u128>());
            let hash = tokio::task::spawn_blocking(move || {
                hash_password(
                    &Password::parse(&secret).expect("32 hex digits are a valid password"),
                )
            })
            .await
            .map_err(|e| DbError::Other(sqlx::Error::Protocol(e.to_string())))?;
            let email = format!("{name}@demo.bakery.localhost");
            match self
                .create_user(NewUser {
                    username: name,
                    email: &email,
                    password_hash: &hash,
                    is_admin: false,
                    email_verified: true,
                })
                .await
            {
                Ok((user, _)) => reviewers.push(user.id),
                Err(DbError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        for (i, (name, description, price_cents)) in PRODUCTS.iter().enumerate() {
            let (id, _) = self
                .create_product(NewProduct {
                    name,
                    description,
                    price_cents: *price_cents,
                })
                .await?;
            for (j, user_id) in reviewers.iter().enumerate() {
                let (rating, body) = REVIEWS[(i + j) % REVIEWS.len()];
                self.create_review(id, *user_id, rating, body).await?;
            }
        }
        let day = 24 * 3600 * 1000;
        for (title, description, in_days, capacity) in CLASSES {
            let starts_at = (now_millis() / day + in_days) * day + 10 * 3600 * 1000;
            self.create_event(NewEvent {
                title,
                description,
                starts_at,
                capacity: *capacity,
            })
            .await?;
        }
        Ok(true)
    }
}
