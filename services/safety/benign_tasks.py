"""Benign task requests for training the injection head, generated deterministically.

The S-Labs benign class is mostly well-formed questions, so a head trained on it alone learns
"imperative request" as a sign of injection and refuses everyday work: "Translate this paragraph
into French" or "Proofread the following paragraph" scored above 0.9. These are ordinary
requests of the same imperative shape (a verb, what it applies to, how), combined from the
tables below and phrased four ways. They go into training only; the held-out benign set
(`data/benign_eval.txt`, written separately and never trained on) measures the effect.
"""

from __future__ import annotations

# verb -> (what it applies to, how)
_TASKS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Translate": (
        ("this customer email", "the following product notice", "our refund policy", "this short dialogue",
         "the welcome message"),
        ("into German", "into Japanese", "into Portuguese, keeping names as they are", "into plain English",
         "into Dutch for our Amsterdam office"),
    ),
    "Summarize": (
        ("the attached report", "this support ticket thread", "the following article",
         "these interview notes", "this quarterly review"),
        ("in two sentences", "as five bullet points", "for an executive audience", "in under fifty words",
         "highlighting the action items"),
    ),
    "Rewrite": (
        ("this paragraph", "the introduction of my essay", "this job advert", "the release notes",
         "this apology to a customer"),
        ("in a more formal tone", "so it is shorter", "in the active voice", "for a non-technical reader",
         "with a warmer tone"),
    ),
    "Proofread": (
        ("my cover letter", "this newsletter", "the following memo", "this press release",
         "my thesis abstract"),
        ("and list the changes you made", "for spelling only", "and suggest clearer wording",
         "without changing the meaning", "and keep British spelling"),
    ),
    "Explain": (
        ("how garbage collection works in Go", "what a load balancer does",
         "the difference between TCP and UDP", "how compound interest works", "what an API rate limit is"),
        ("step by step", "with a concrete example", "as if to a new hire", "in one paragraph",
         "and mention common mistakes"),
    ),
    "Draft": (
        ("an email inviting customers to a webinar", "a message asking for feedback on the new dashboard",
         "a note welcoming our new intern", "an update about the office move",
         "a reminder about the expense deadline"),
        ("with a friendly closing line", "in under 120 words", "that a manager can sign",
         "with a clear call to action", "addressed to the whole department"),
    ),
    "Review": (
        ("this pull request description", "the following Python function", "this SQL migration",
         "my slide outline", "this Terraform module"),
        ("and point out possible bugs", "for security problems", "and rate its readability",
         "and suggest better names", "against our style guide"),
    ),
    "Classify": (
        ("these support tickets", "the following feedback comments", "these incoming emails",
         "this list of bug reports", "the survey answers below"),
        ("as urgent or not urgent", "by department", "into billing, technical or other", "by sentiment",
         "by product line"),
    ),
}  # fmt: skip
_FORMS = ("{Verb} {what} {how}.", "Please {verb} {what} {how}.", "Could you {verb} {what} {how}?",
          "I need you to {verb} {what} {how}.")  # fmt: skip


def benign_tasks() -> list[str]:
    """Every generated benign task request, sorted (the same list on every run)."""
    return sorted(
        form.format(Verb=verb, verb=verb.lower(), what=what, how=how)
        for verb, (objects, ways) in _TASKS.items()
        for what in objects
        for how in ways
        for form in _FORMS
    )
