"""A labelled set of realistic jobs for the routing classifier (farm.routing.classify).

Each case is (prompt, system, max_tokens, tools, expected): ``tools`` is a tuple of tool
names (expanded into Messages-API tool definitions), ``expected`` is "simple" or "complex".
The labels say which model a careful operator would pick: a fast small model for lookups,
translations, one-line extractions and short summaries; a large one for debugging, proofs,
design, long-form writing, refactoring, multi-part analysis and tool-using agent work.
Borderline cases are marked in comments; they are labelled, not skipped.

    python -c "from tests.unit.routing_cases import accuracy; print(accuracy())"
"""

from __future__ import annotations

from typing import Any, NamedTuple

from farm.jobs import Complexity, JobRequest
from farm.routing.classify import classify


class Case(NamedTuple):
    prompt: str
    system: str | None
    max_tokens: int
    tools: tuple[str, ...]
    expected: str

    def request(self) -> JobRequest:
        return JobRequest(
            prompt=self.prompt,
            system=self.system,
            max_tokens=self.max_tokens,
            tools=tuple(_tool(name) for name in self.tools),
        )


def _tool(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": f"The {name.replace('_', ' ')} tool.",
        "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
    }


S, C = "simple", "complex"
NO_TOOLS: tuple[str, ...] = ()

_PARAGRAPH = (
    "The city council met on Tuesday to discuss the proposed bike lane on Elm Street. "
    "Residents were split: shop owners worried about losing parking, while parents said "
    "the lane would make the school commute safer. The council postponed the vote to next "
    "month and asked the transport department for a traffic study."
)

_BUGGY_PY = '''```python
def average(values):
    total = 0
    for v in values:
        total += v
    return total / len(values)

print(average([]))
```
Traceback (most recent call last):
  File "avg.py", line 7, in <module>
    print(average([]))
ZeroDivisionError: division by zero'''

_JS_RACE = '''```javascript
let counter = 0;
async function increment() {
  const current = await db.get("counter");
  await db.set("counter", current + 1);
}
await Promise.all([increment(), increment(), increment()]);
console.log(await db.get("counter")); // prints 1, expected 3
```'''

_LEGACY_JAVA = '''```java
public class OrderService {
    public double total(List<Order> orders, String country) {
        double t = 0;
        for (Order o : orders) {
            if (country.equals("DE")) { t += o.price * 1.19; }
            else if (country.equals("FR")) { t += o.price * 1.20; }
            else if (country.equals("US")) { t += o.price; }
            if (o.coupon != null) { t -= o.coupon.amount; }
        }
        return t;
    }
}
```'''

_SQL = "SELECT name, COUNT(*) FROM orders GROUP BY name HAVING COUNT(*) > 5;"

_LONG_CONTRACT = " ".join(
    f"Clause {i}. The Supplier shall deliver the Goods described in Schedule {i} within "
    f"{10 + i} business days of the Purchase Order, failing which the Buyer may apply a "
    "penalty of one percent of the order value per day of delay, capped at ten percent."
    for i in range(1, 60)
)

CASES: tuple[Case, ...] = (
    # --- short factual questions -> simple
    Case("What is the capital of Australia?", None, 1024, NO_TOOLS, S),
    Case("Who wrote 'One Hundred Years of Solitude'?", None, 1024, NO_TOOLS, S),
    Case("How many bytes are in a kibibyte?", None, 256, NO_TOOLS, S),
    Case("When did the Berlin Wall fall?", None, 1024, NO_TOOLS, S),
    Case("What's the boiling point of water at sea level in Fahrenheit?", None, 1024, NO_TOOLS, S),
    Case("Is a tomato a fruit or a vegetable? Answer in one sentence.", None, 1024, NO_TOOLS, S),
    Case("Define 'idempotent' in plain English.", None, 1024, NO_TOOLS, S),
    Case("Which HTTP status code means 'Too Many Requests'?", None, 1024, NO_TOOLS, S),
    Case("What does the acronym GDPR stand for?", None, 1024, NO_TOOLS, S),
    Case("Give me a synonym for 'happy'.", None, 1024, NO_TOOLS, S),
    # --- translations -> simple
    Case("Translate to French: 'The meeting has been moved to Thursday at 3pm.'", None, 1024,
         NO_TOOLS, S),
    Case("Translate this into Spanish:\n\nThank you for your order. It will ship within two "
         "business days.", None, 1024, NO_TOOLS, S),
    Case("How do you say 'good morning' in Japanese?", None, 1024, NO_TOOLS, S),
    Case("Bitte übersetze ins Englische: 'Der Zug hat zehn Minuten Verspätung.'", "You are a "
         "translator. Translate the user's text into the requested language.", 1024, NO_TOOLS, S),
    Case("Translate the following product title to German: Stainless steel water bottle, 750 ml, "
         "leak-proof", None, 256, NO_TOOLS, S),
    # --- classification / extraction one-liners -> simple
    Case("Classify the sentiment of this review as positive, negative or neutral: 'The battery "
         "died after two days and support never answered.'", None, 16, NO_TOOLS, S),
    Case("Extract the email address from: 'Contact Jane Doe at jane.doe@example.com for details.'",
         None, 1024, NO_TOOLS, S),
    Case("Is this message spam? Answer yes or no.\n\n'Congratulations! You won a $1000 gift card, "
         "click here.'", None, 8, NO_TOOLS, S),
    Case("Categorize this support ticket into one of: billing, shipping, technical, other.\n\n'I "
         "was charged twice for my subscription this month.'", None, 1024, NO_TOOLS, S),
    Case("Extract the date and the amount from this line as JSON: 'Invoice #4471 dated "
         "2024-03-02, total EUR 1,250.00'", "Reply with JSON only.", 200, NO_TOOLS, S),
    # borderline: a list, but a trivial one
    Case("Label the language of each sentence:\n1. Hola, ¿cómo estás?\n2. Guten Tag.\n3. Bonjour "
         "à tous.\n4. Buongiorno.", None, 1024, NO_TOOLS, S),
    Case("What is the product category of 'Logitech MX Master 3S wireless mouse'? One word.", None,
         1024, NO_TOOLS, S),
    Case("Convert 72 degrees Fahrenheit to Celsius.", None, 1024, NO_TOOLS, S),
    Case("Fix the spelling in this sentence: 'Their going too the libary tomorow.'", None, 1024,
         NO_TOOLS, S),
    Case("Rephrase this to sound more polite: 'Send me the report now.'", None, 1024, NO_TOOLS, S),
    # --- short summaries -> simple
    Case(f"Summarize this paragraph in one sentence:\n\n{_PARAGRAPH}", None, 1024, NO_TOOLS, S),
    Case(f"TL;DR:\n\n{_PARAGRAPH}", None, 1024, NO_TOOLS, S),
    Case(f"Give me three bullet points summarizing this:\n\n{_PARAGRAPH}", None, 1024, NO_TOOLS, S),
    Case(f"Write a headline for this news item:\n\n{_PARAGRAPH}", None, 1024, NO_TOOLS, S),
    # --- small writing / code chores -> simple
    Case("Write a short thank-you note to a colleague who covered my shift.", None, 1024, NO_TOOLS,
         S),
    Case("Write a Python one-liner that reverses a string.", None, 1024, NO_TOOLS, S),
    # borderline: code, easy
    Case(f"What does this SQL query return?\n\n{_SQL}", None, 1024, NO_TOOLS, S),
    Case("Suggest five names for a coffee shop near a university.", None, 1024, NO_TOOLS, S),
    Case("Write a regex that matches a US ZIP code.", None, 1024, NO_TOOLS, S),
    Case("Explain what a mutex is in two sentences.", None, 1024, NO_TOOLS, S),
    Case("Write a haiku about autumn rain.", None, 1024, NO_TOOLS, S),
    Case("Turn this into a formal email subject line: 'server down again, need help asap'", None,
         64, NO_TOOLS, S),
    # --- tool use, single lookup -> simple (borderline)
    Case("What's the weather in Paris right now?", None, 1024, ("get_weather",), S),
    # --- code debugging with code blocks -> complex
    Case(f"My script crashes, can you debug it and explain the fix?\n\n{_BUGGY_PY}", None, 1024,
         NO_TOOLS, C),
    Case(f"This counter ends up at 1 instead of 3. Why, and how do I fix it?\n\n{_JS_RACE}", None,
         2048, NO_TOOLS, C),
    Case("Our Go service leaks goroutines under load: memory grows until OOM after ~6 hours. The "
         "handler spawns a goroutine per request that waits on a channel with no timeout. How do "
         "I find the root cause and what are the options to fix it?", None, 2048, NO_TOOLS, C),
    Case("```rust\nfn longest(a: &str, b: &str) -> &str {\n    if a.len() > b.len() { a } else { "
         "b }\n}\n```\nThe compiler says 'missing lifetime specifier'. Explain the error and fix "
         "the code.", None, 1024, NO_TOOLS, C),
    Case("pytest fails intermittently on CI with 'database is locked' but never locally. We use "
         "SQLite with pytest-xdist. What's going on and how should we restructure the fixtures?",
         None, 2048, NO_TOOLS, C),
    # --- refactoring -> complex
    Case("Refactor this class to use the strategy pattern for country taxes and make it "
         f"testable:\n\n{_LEGACY_JAVA}", None, 4096, NO_TOOLS, C),
    Case("Refactor our 2,000-line Django views.py into service and repository layers. Here is the "
         "outline of the current functions and their dependencies; propose the new module "
         "structure and the migration order so nothing breaks.", None, 4096, NO_TOOLS, C),
    Case("```python\nclass Cache:\n    def __init__(self):\n        self.data = {}\n    def "
         "get(self, k):\n        return self.data.get(k)\n    def set(self, k, v):\n        "
         "self.data[k] = v\n```\nMake this cache thread-safe and add TTL expiry and an LRU "
         "eviction policy with O(1) operations.", None, 2048, NO_TOOLS, C),
    # --- multi-step math and proofs -> complex
    Case("Prove that there are infinitely many primes congruent to 3 mod 4.", None, 2048, NO_TOOLS,
         C),
    Case("Show that the sum of the first n odd numbers is n^2, by induction, and explain each "
         "step.", None, 1024, NO_TOOLS, C),
    Case("A bag has 5 red and 7 blue balls. We draw 4 without replacement. What is the "
         "probability of exactly 2 red given at least 1 red? Work through it step by step.", None,
         1024, NO_TOOLS, C),
    Case("Derive the closed form of the variance of a binomial distribution from first principles.",
         None, 2048, NO_TOOLS, C),
    Case("Let f be continuous on [0,1] with f(0)=f(1). Prove that for every n there exist x such "
         "that f(x) = f(x + 1/n).", "You are a careful mathematician. Give rigorous proofs.", 2048,
         NO_TOOLS, C),
    # --- system design / architecture -> complex
    Case("Design a URL shortener that handles 10k writes/s and 1M reads/s. Cover the data model, "
         "ID generation, caching, and how you'd shard the database.", None, 4096, NO_TOOLS, C),
    Case("We're moving from a monolith to microservices. Propose an architecture for order, "
         "payment and inventory services with consistency guarantees, and analyze the trade-offs "
         "of sagas vs 2PC.", None, 4096, NO_TOOLS, C),
    Case("Design the schema and the API for a multi-tenant feature-flag service, including audit "
         "history and percentage rollouts.", None, 3000, NO_TOOLS, C),
    Case("How should we architect event ingestion so that it is idempotent and survives a region "
         "outage?", None, 2048, NO_TOOLS, C),
    # --- long-form writing with large max_tokens -> complex
    Case("Write a 2000-word essay on the causes of the 2008 financial crisis.", None, 6000,
         NO_TOOLS, C),
    Case("Write a detailed report on the state of solid-state battery research, with sections on "
         "chemistry, manufacturing and the main companies.", None, 8000, NO_TOOLS, C),
    Case("Draft a comprehensive onboarding guide for new backend engineers: environments, "
         "deploys, on-call, code review norms and our incident process.", None, 8000, NO_TOOLS, C),
    Case("Write the first chapter of a mystery novel set in 1920s Shanghai, about 5 pages long.",
         None, 6000, NO_TOOLS, C),
    Case("Write a white paper arguing for a four-day work week in software companies.", None, 10000,
         NO_TOOLS, C),
    # --- multi-question analysis -> complex
    Case("For our SaaS pricing:\n1. Should we charge per seat or per usage?\n2. How do we "
         "grandfather existing customers?\n3. What discount for annual plans?\n4. How do we test "
         "price changes without hurting churn?", None, 2048, NO_TOOLS, C),
    Case("Compare PostgreSQL, MongoDB and Cassandra for a time-series workload. Which scales "
         "writes best? Which is cheapest to operate? Which would you choose for 50 TB of data and "
         "why?", None, 3000, NO_TOOLS, C),
    Case("Analyze the pros and cons of remote-first vs office-first for a 40-person startup, then "
         "recommend a policy.", None, 2048, NO_TOOLS, C),
    Case("Review this supply contract. Which clauses are unfavourable to the buyer, what "
         f"penalties could accumulate over a year, and what would you renegotiate?\n\n"
         f"{_LONG_CONTRACT}",
         "You are a commercial lawyer.", 4096, NO_TOOLS, C),
    Case("Evaluate our go-to-market strategy for a B2B security product entering the EU: channel "
         "partners, compliance certifications, pricing and hiring.", None, 4096, NO_TOOLS, C),
    # --- implementation tasks -> complex
    Case("Implement a Raft leader election in Python with asyncio, including randomized timeouts "
         "and heartbeats, and write unit tests for split votes.", None, 8000, NO_TOOLS, C),
    Case("Write a parser for a subset of SQL (SELECT with WHERE, AND/OR and parentheses) in "
         "TypeScript that produces an AST.", None, 6000, NO_TOOLS, C),
    Case("Optimize this query; it takes 40 s on a 200M-row table:\n\n```sql\nSELECT * FROM events "
         "e JOIN users u ON u.id = e.user_id WHERE e.created_at > now() - interval '7 days' ORDER "
         "BY e.created_at DESC;\n```", None, 2048, NO_TOOLS, C),
    # --- tool-using agent tasks -> complex
    Case("Find the three cheapest direct flights from Lisbon to Berlin next Friday, check the "
         "baggage policy of each airline, and book the best option under 200 EUR.", "You are a "
         "travel agent with tools.", 2048, ("search_flights", "get_airline_policy", "book_flight"),
         C),
    Case("Look through the last 7 days of error logs, group the errors by root cause, open a "
         "ticket for each new group and post a summary to #oncall.", None, 4096,
         ("query_logs", "create_ticket", "post_slack"), C),
    Case("Research our top 5 competitors' pricing pages and fill in the comparison spreadsheet.",
         None, 4096, ("web_search", "fetch_url", "update_sheet"), C),
    Case("Run the test suite, read the failures, and patch the code until all tests pass.", "You "
         "are a coding agent. Use the tools to inspect and edit the repository.", 8000,
         ("run_shell", "read_file", "write_file"), C),
    # --- borderline cases, labelled
    Case("Explain the difference between TCP and UDP.", None, 1024, NO_TOOLS, S),
    Case("Write a Python function that checks whether a number is prime.", None, 1024, NO_TOOLS, S),
    Case("Summarize the key points of this contract.\n\n" + _LONG_CONTRACT, None, 1024, NO_TOOLS,
         S),
    Case("What are the pros and cons of using a monorepo for a team of 200 engineers across 30 "
         "services?", None, 2048, NO_TOOLS, C),
    Case("Why does `0.1 + 0.2 == 0.3` evaluate to False in Python?", None, 1024, NO_TOOLS, S),
    Case("Explain step by step how to make a cup of pour-over coffee.", None, 1024, NO_TOOLS, S),
    Case("Give me a 300-word product description for a bamboo cutting board.", None, 1024, NO_TOOLS,
         S),
    Case("Should I use Redis or Memcached for session storage? Give a brief recommendation.", None,
         1024, NO_TOOLS, S),
    Case("Write a 1500-word blog post about migrating from REST to GraphQL, with code examples.",
         None, 4096, NO_TOOLS, C),
    Case("Our checkout conversion dropped 12% after last week's release. Here is what changed: "
         "new payment form, a slower CDN, and a price increase on shipping. How would you figure "
         "out which change caused it?", None, 2048, NO_TOOLS, C),
    # --- written after the weights were fixed and not used to tune them (a held-out check)
    Case("What year did the first iPhone come out?", None, 1024, NO_TOOLS, S),
    Case("Translate 'where is the train station?' into Italian.", None, 1024, NO_TOOLS, S),
    Case("Extract all the city names from this text: 'We flew from Oslo to Rome, then took the "
         "train to Florence and finally to Milan.'", None, 1024, NO_TOOLS, S),
    Case("Is the following statement true or false? 'The Pacific is the largest ocean.'", None, 16,
         NO_TOOLS, S),
    Case("Write an SQL query that counts users per country from a users table.", None, 1024,
         NO_TOOLS, S),
    Case("Reply to this customer politely saying their refund was processed: 'Where is my "
         "refund??'", "You are a friendly support agent.", 512, NO_TOOLS, S),
    Case("Give me a one-line docstring for a function that parses ISO 8601 dates.", None, 1024,
         NO_TOOLS, S),
    Case("List the planets of the solar system in order from the sun.", None, 1024, NO_TOOLS, S),
    Case("```python\nimport asyncio\n\nasync def fetch(session, url):\n    async with "
         "session.get(url) as r:\n        return await r.text()\n\nasync def main(urls):\n    for "
         "url in urls:\n        await fetch(session, url)\n```\nThis is slow for 10k URLs and "
         "sometimes hangs. Rewrite it with bounded concurrency, retries and timeouts.", None, 3000,
         NO_TOOLS, C),
    Case("Prove that the halting problem is undecidable.", None, 2048, NO_TOOLS, C),
    Case("Design a rate limiter for a public API gateway serving 500k requests per second across "
         "3 regions; discuss token bucket vs sliding window and how counters stay consistent.",
         None, 4096, NO_TOOLS, C),
    Case("Write a comprehensive incident postmortem for yesterday's 3-hour outage of the payments "
         "API, including timeline, root cause, impact and action items.", None, 6000, NO_TOOLS, C),
    Case("Plan and execute a database migration: inspect the current schema, write the migration, "
         "run it on staging and report the results.", None, 4096,
         ("run_sql", "read_schema", "run_shell"), C),
    Case("I have three job offers. 1) startup, equity-heavy; 2) big tech, high salary; 3) remote "
         "nonprofit. How should I weigh them? What questions should I ask each? What would you "
         "pick if I value learning most?", None, 2048, NO_TOOLS, C),
    Case("Explain how HTTPS certificate validation works, from the TLS handshake to the root CA.",
         None, 1024, NO_TOOLS, S),  # borderline: explanatory, one topic
    # borderline: code, but small
    Case("Write unit tests for this function:\n\n```python\ndef slugify(s):\n    return "
         "s.lower().strip().replace(' ', '-')\n```", None, 1024, NO_TOOLS, S),
)


def accuracy(cases: tuple[Case, ...] = CASES) -> float:
    """The share of cases that farm.routing.classify labels as expected."""
    hits = sum(1 for case in cases if classify(case.request())[0] == Complexity(case.expected))
    return hits / len(cases)


def misclassified(cases: tuple[Case, ...] = CASES) -> list[tuple[Case, str, str]]:
    """(case, predicted, reason) for every case the classifier gets wrong."""
    out: list[tuple[Case, str, str]] = []
    for case in cases:
        predicted, reason = classify(case.request())
        if predicted != Complexity(case.expected):
            out.append((case, predicted.value, reason))
    return out
