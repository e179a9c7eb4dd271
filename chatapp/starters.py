"""Chat starters shown on the Chainlit welcome screen: (label, message) pairs.

Written for travel-chat; each starter opens a conversation the assistant handles within policy
(what it can do, seasons, local dishes, getting around). Labels stay within 30 characters.
"""

from __future__ import annotations

STARTERS: list[tuple[str, str]] = [
    ("What can you help with?", "What can you do to help me plan a trip?"),
    ("Best season for Portugal", "Which months are nicest for a trip to Portugal?"),
    ("Dishes to try in Mexico", "What local dishes should I try on a trip to Mexico?"),
    ("Getting around Tokyo", "Trains, buses or walking: how should I get around Tokyo?"),
]
