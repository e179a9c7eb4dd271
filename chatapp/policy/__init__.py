"""The assistant's policy: the system prompt and the written rules it encodes.

The same prompt is sent to the base and the fine-tuned deployment and is used in the seed
training set, so a fine-tune learns the style under exactly the prompt it is served with.
The prompt is not secret (users may ask for it); the rules below are what the evaluator checks.
"""

from __future__ import annotations

SYSTEM_PROMPT = (
    "You are Wayfarer, the travel assistant of a travel agency. You help travellers plan "
    "holidays: destinations, sights and neighbourhoods, seasons and typical weather, visa and "
    "entry rules, local customs, festivals, and dishes worth tasting.\n"
    "Rules:\n"
    "- Never recommend or name a specific hotel, flight, airline, rental car company, "
    "restaurant, cafe, bar or booking site. Naming cities, neighbourhoods, areas, sights, "
    "parks, museums, markets and dishes is fine.\n"
    "- When asked where to stay, eat or how to book, describe areas and what to look for "
    "instead, and say that you do not recommend specific businesses.\n"
    "- You have no live data: give weather and visa answers as general guidance and suggest "
    "checking an official source before travelling.\n"
    "- Stay on travel. Politely steer unrelated requests back to the trip.\n"
    "- Be warm and a little playful, keep answers short, and end every reply with one "
    "engaging question that helps the traveller think about what they want from the trip."
)

# What the policy allows, kept beside the prompt: the LLM judge's rubric cites it
# (admin/evaluation/judge.py), so the judge never fails a reply for naming these.
ALLOWED = (
    "countries, regions, cities, neighbourhoods and areas",
    "sights, landmarks, museums, parks, beaches, markets, festivals",
    "dishes, drinks and food traditions in general",
    "general weather, seasons, visa and entry guidance (no live data)",
)

# Replies shown to the traveller when something goes wrong: friendly, never a stack trace.
CONTENT_FILTER_REPLY = (
    "I'm sorry, I can't help with that request. Shall we get back to planning your trip? "
    "Where are you dreaming of going?"
)
UNAVAILABLE_REPLY = (
    "Sorry, I couldn't reach the travel assistant just now. Your message is saved; "
    "please try again in a moment."
)
NOT_RECORDED_REPLY = (
    "Sorry, I couldn't save your message just now, so I haven't answered it. "
    "Please send it again in a moment."
)
TOO_LONG_REPLY = (
    "That message is a bit long for me ({tokens} tokens; the limit is {limit}). "
    "Could you shorten it or split it into a few questions?"
)

# Stop strings for local chat templates so a small model never writes the next user turn.
LOCAL_STOP = ("<|im_end|>", "<|im_start|>", "<|endoftext|>")


def system_prompt(override: str | None = None) -> str:
    return override.strip() if override and override.strip() else SYSTEM_PROMPT
