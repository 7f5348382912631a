//! `audit`: the original design's audit through a deployed gateway, one step per command, so a
//! deployment test (`scripts/lab-e2e`) checks the machines between the steps (rows on the database
//! machines, queues on the broker's). Each step prints its checks on stderr and what the next
//! check needs on stdout; any failure is a message and exit code 1.
//!
//!   audit --gateway http://127.0.0.1:8080 movie --tag T     # prints the movie's id
//!   audit --gateway http://127.0.0.1:8080 delete --id ID
//!   audit --gateway http://127.0.0.1:8080 order --user U --items 3 --amount 99.97   # prints the order id

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use end_to_end::audit::Gateway;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    name = "audit",
    about = "The original design's audit, step by step, through a gateway."
)]
struct Args {
    /// The gateway's base URL.
    #[arg(long)]
    gateway: String,
    /// How long each request may take, in seconds.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    #[command(subcommand)]
    step: Step,
}

#[derive(Debug, Subcommand)]
enum Step {
    /// Create, list, search, get and update a movie titled `The Matrix TAG`; prints its id.
    Movie {
        #[arg(long)]
        tag: String,
    },
    /// Delete movie ID, then check it is a JSON 404.
    Delete {
        #[arg(long)]
        id: i64,
    },
    /// Post an order that must be accepted (202); prints its id.
    Order {
        #[arg(long)]
        user: String,
        #[arg(long)]
        items: String,
        #[arg(long)]
        amount: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_secs))
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            eprintln!("error: cannot build the HTTP client: {error}");
            return ExitCode::FAILURE;
        }
    };
    let gateway = Gateway::new(client, &args.gateway);
    let result = match args.step {
        Step::Movie { tag } => gateway
            .movie_until_update(&tag)
            .await
            .map(|movie| movie.id.to_string()),
        Step::Delete { id } => gateway.delete_movie(id).await.map(|()| String::new()),
        Step::Order {
            user,
            items,
            amount,
        } => {
            let order = json!({"user_id": user, "number_of_items": items, "total_amount": amount});
            gateway.post_order(&order).await
        }
    };
    match result {
        Ok(output) => {
            if !output.is_empty() {
                println!("{output}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
