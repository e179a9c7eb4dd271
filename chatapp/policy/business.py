"""Find a named business in a reply: the evidence behind the `no_business` policy check.

The policy forbids naming a specific hotel, airline or flight, rental car company, restaurant,
cafe, bar or booking site, and allows cities, neighbourhoods, sights, markets and dishes. No list
of every business exists, so the detector combines
  - well-known brands (chains, airlines, rental companies, booking sites), some only in context
    because their names are also ordinary words or places ("Budget", "Delta", "Emirates");
  - business words next to a capitalised name ("Hotel Artemide", "Trattoria da Enzo",
    "Acropolis View Hotel", "Joe's Pizza", "China Airlines");
  - a capitalised name after "stay at", "book a room at", "dinner at", "fly with", "rent from";
  - "the best hostel in X is the Stadler";
  - numbered or bulleted lists of names introduced as hotels, restaurants, airlines...
Quoted text is ignored (a song called "Hotel California" recommends nothing), and names that
contain a place word ("Great Market Hall", "Grand Place") are places, not businesses.
"""

from __future__ import annotations

import re

_UP = "A-ZÀ-ÖØ-Þ"
_WORD = rf"[{_UP}][\w'’&-]*"  # one capitalised word
_PARTICLE = r"(?:da|di|del|della|dell'|dei|de|du|des|la|le|el|al|alla|zum|zur|am|of|on|the|y)"
_NAME = rf"{_WORD}(?:[ \t]+(?:{_PARTICLE}[ \t]+)?{_WORD}){{0,4}}"

# Brands whose names are not ordinary words: any mention names a business.
_BRANDS = (
    # lodging
    "Hilton", "Marriott", "Hyatt", "Sheraton", "Westin", "Ritz-Carlton", "the Ritz", "The Ritz",
    "Radisson",
    "InterContinental", "Holiday Inn", "Best Western", "Novotel", "Ibis", "Mercure", "Sofitel",
    "Mandarin Oriental", "Kempinski", "Fairmont", "Waldorf Astoria", "Travelodge",
    "Premier Inn", "Wyndham", "Mövenpick", "Raffles Hotel", "Motel 6",
    # airlines
    "Ryanair", "easyJet", "Wizz Air", "Vueling", "Lufthansa", "KLM", "Air France",
    "British Airways", "Aer Lingus", "Etihad", "Cathay Pacific", "JetBlue", "Qantas",
    "Air Canada", "Virgin Atlantic", "Virgin Australia", "AirAsia", "Jetstar", "IndiGo",
    "Icelandair", "Finnair", "Avianca", "Aeromexico", "TAP Portugal",
    # rental cars
    "Hertz", "Avis", "Sixt", "Europcar", "Goldcar", "Thrifty", "Zipcar", "Discover Cars",
    # booking sites
    "Airbnb", "Expedia", "Trivago", "Skyscanner", "Agoda", "Vrbo", "Hostelworld",
    "Tripadvisor", "TripAdvisor", "Priceline", "Orbitz", "Ferryhopper", "Omio", "Trainline",
    "Viator", "GetYourGuide", "Klook", "OpenTable", "TheFork", "Google Flights",
    # restaurant, cafe and bar chains
    "McDonald's", "Starbucks", "KFC", "Burger King", "Pizza Hut", "Nando's", "Shake Shack",
    "In-N-Out", "Five Guys", "Din Tai Fung", "Ichiran", "Ippudo", "Hard Rock Cafe",
    "Wagamama", "Tim Hortons", "Pret a Manger",
)
_BRAND_RE = re.compile(r"(?<![\w.])(?:" + "|".join(re.escape(b) for b in _BRANDS) + r")(?![\w-])")

# Brands that are also places or words: they count only beside words of their trade.
_RENTAL_CTX = r"\b(?:rent\w*|hire|car|cars|pick-?ups?|drop-?offs?)\b"
_AIR_CTX = r"\b(?:airlines?|carriers?|fly|flying|flights?|bassinets?|cabin|legroom|fares?)\b"
_STAY_CTX = r"\b(?:stay\w*|hotels?|resorts?|rooms?|suites?|check-?in)\b"
_AMBIGUOUS = (
    (r"Enterprise|Budget|Alamo|National|Dollar", _RENTAL_CTX),
    (r"(?<![A-Z]\w )Delta(?! Air)|United(?! (?:States|Kingdom|Nations|Arab))|Southwest"
     r"|(?<!Arab )Emirates|Qatar(?= Airways)|Turkish(?= Airlines)", _AIR_CTX),
    (r"Four Seasons|Peninsula|Aman|Shangri-La", _STAY_CTX),
)

# A business word before or after a capitalised name.
_PREFIX = (r"Hotel|Hôtel|Hostel|Hostal|Pension|Pensione|Riad|Ryokan|Caf[eé]|Caff[eè]|Bar"
           r"|Trattoria|Osteria|Ristorante|Pizzeria|Taverna|Brasserie|Bistro|Bistrot"
           r"|Restaurant|Restaurante|Chez|Gasthaus|Gasthof|Auberge|Albergo|Locanda|Posada")
_SUFFIX = (r"Hotel|Hostel|Inn|Lodge|Resort|Suites|Motel|Guesthouse|Guest House|B&B|Bar|Pub"
           r"|Caf[eé]|Restaurant|Bistro|Brasserie|Trattoria|Osteria|Pizzeria|Taverna|Tavern"
           r"|Diner|Grill|Steakhouse|Kitchen|Eatery|Deli|Delicatessen|Airlines|Airways"
           r"|Air Lines|Rent-A-Car|Car Rental|Car Hire|Rentals")
_PREFIX_RE = re.compile(rf"\b(?:{_PREFIX})[ \t]+(?:{_PARTICLE}[ \t]+)?{_NAME}")
_SUFFIX_RE = re.compile(rf"\b{_NAME}[ \t]+(?:{_SUFFIX})\b")
_AIR_RE = re.compile(rf"\b(?:Air[ \t]+(?!Force|Quality|Pollution|Show){_WORD}|{_WORD}[ \t]+Air)\b"
                     r"(?![ \t]+(?:quality|pollution))")
_POSSESSIVE_RE = re.compile(
    rf"\b{_WORD}['’]s[ \t]+(?:Pizza|Pizzeria|Diner|Bar|Caf[eé]|Kitchen|Grill|Deli"
    r"|Delicatessen|Pub|Tavern|Bistro|Restaurant|Burgers?|Bagels?|Tacos|Steakhouse)\b")

# "stay at the Peninsula", "book a room at Riad Yasmine", "tea at the Ritz", "fly with X":
# the verb in any case ("Book a room at ..."), the name capitalised.
_VERB_AT_RE = re.compile(
    r"\b(?i:(?:stay|staying|stayed|check(?:ing)? in)[ \t]+at"
    r"|(?:book|booking|booked|reserve|reserving)(?:[ \t]+(?:a|your|the|two)[ \t]+"
    r"(?:room|table|flight|seat|stay|night|suite|bed|car|ticket)s?)?[ \t]+"
    r"(?:at|with|on|through|via)"
    r"|(?:dine|dining|dinner|lunch|breakfast|brunch|tea|eat|eating|drinks?|cocktails?)[ \t]+at"
    r"|(?:fly|flying|flew)[ \t]+with"
    r"|(?:rent|renting|hire)(?:[ \t]+a[ \t]+car)?[ \t]+(?:from|with))"
    rf"[ \t]+(?:the[ \t]+|The[ \t]+)?(?P<name>{_NAME})")

# "The best hostel ... is the Stadler."
_BEST_IS_RE = re.compile(
    r"\b(?:best|top|cheapest|nicest|finest|favou?rite|most popular|most famous)[ \t]+"
    r"(?:[\w-]+[ \t]+){0,2}?(?:hotels?|hostels?|resorts?|restaurants?|bars?|caf[eé]s?|pubs?"
    r"|airlines?|carriers?|ramen shops?|pizza places?|rental (?:company|firm))\b[^.!?\n]*?"
    r"\b(?:is|are|would be)[ \t]+(?:(?:definitely|probably|indeed|easily|undoubtedly)[ \t]+)?"
    rf"(?:the[ \t]+)?(?P<name>{_NAME})")

_LIST_ITEM_RE = re.compile(r"^[ \t]*(?:\d+[.)]|[-*•])[ \t]+(?:\*\*)?(?P<name>" + _NAME + ")",
                           re.MULTILINE)
_INLINE_ITEM_RE = re.compile(rf"(?:^|(?<=\s))\d+\.[ \t]+(?P<name>{_NAME})")
_LIST_INTRO_RE = re.compile(
    r"\b(?:hotels?|hostels?|resorts?|guesthouses?|restaurants?|eateries|bars|caf[eé]s|pubs"
    r"|trattorias|airlines|carriers|rental (?:companies|firms)|booking (?:sites?|apps?)"
    r"|places to (?:stay|eat))\b", re.IGNORECASE)

_DOMAIN_RE = re.compile(r"\b(?P<name>[\w-]+\.(?:com|net|co\.uk|com\.au|travel))\b", re.I)

# A name containing one of these is a place (market hall, square, sight), not a business.
_PLACE_WORDS = re.compile(
    r"\b(?:Market|Markets|Mercado|Mercat|Markt|Markthalle|Hall|Bazaar|Souk|Square|Place|Plaza"
    r"|Piazza|Park|Gardens?|Museum|Palace|Cathedral|Church|Temple|Mosque|Station|Airport"
    r"|Street|Road|Avenue|Beach|Bridge|Canal|Castle|Tower|Gate|Lake|River|Island|Bay"
    r"|Harbou?r|Quarter|District|Village|Valley|Old Town|Festival|University|Canyon)\b")
_LOWER_PLACE_AFTER = re.compile(r"[ \t]+(?:market|square|quarter|district|neighbou?rhood|area"
                                r"|station|beach|old town)\b")
# Places named like businesses, and theme parks (sights, which the policy allows).
_ALLOWED_NAMES = re.compile(
    r"Hôtel de Ville|Hotel de Ville|Temple Bar|Hell's Kitchen|Raffles Place|Disney|Disneyland"
    r"|Universal|LEGOLAND|Legoland|SeaWorld|Six Flags|Europa-Park|Tivoli|PortAventura")
_CALENDAR = re.compile(r"^(?:Christmas|Easter|New Year|Ramadan|Diwali|January|February|March"
                       r"|April|May|June|July|August|September|October|November|December"
                       r"|Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)\b")
_GENERIC_WORDS = frozenset((
    "The", "A", "An", "This", "That", "Your", "Our", "My", "Any", "Each", "Every", "Some",
    "Many", "Most", "Big", "Small", "Cheap", "Budget", "Luxury", "Boutique", "Local", "Good",
    "Best", "Great", "Top", "Airport", "Beach", "Ski", "Rooftop", "Wine", "Tapas", "Hotel",
    "Hostel", "Here", "These", "Those", "It", "I", "You", "We", "They", "He", "She",
    # words that start a sentence or a list item, never a name on their own
    "In", "On", "At", "For", "From", "To", "With", "If", "When", "Where", "While", "As", "And",
    "But", "Or", "So", "Then", "Also", "Don't", "Do", "Try", "Visit", "Go", "Take", "Book"))
_QUOTED = re.compile(r"\"[^\"\n]{1,80}\"|“[^”\n]{1,80}”|‘[^’\n]{1,80}’"
                     r"|(?<!\w)'[^'\n]{1,80}'(?!\w)")


def _mask_quotes(text: str) -> str:
    # Keep offsets: quoted titles become blanks of the same length.
    return _QUOTED.sub(lambda m: " " * len(m.group(0)), text)


def _is_place_or_generic(name: str, text: str, end: int) -> bool:
    words = name.split()
    return (all(w in _GENERIC_WORDS for w in words)
            or bool(_PLACE_WORDS.search(name))
            or bool(_ALLOWED_NAMES.search(name))
            or bool(_CALENDAR.match(name))
            or bool(_LOWER_PLACE_AFTER.match(text, end)))


def _sentence_at(text: str, pos: int) -> str:
    start = max(text.rfind(c, 0, pos) for c in ".!?\n") + 1
    ends = [i for i in (text.find(c, pos) for c in ".!?\n") if i >= 0]
    return text[start:min(ends) if ends else len(text)]


def _sentence_initial(text: str, pos: int) -> bool:
    before = text[:pos].rstrip(" \t*")
    return not before or before[-1] in ".!?:\n-•" or bool(re.search(r"\d[.)]$", before))


def find_business(reply: str) -> str | None:
    """The first phrase in `reply` that names a specific business, or None."""
    text = _mask_quotes(reply)
    allowed = [(a.start(), a.end()) for a in _ALLOWED_NAMES.finditer(text)]
    m = _BRAND_RE.search(text)
    if m:
        return m.group(0)
    for names, ctx in _AMBIGUOUS:
        for m in re.finditer(rf"\b(?:{names})\b", text):
            if _sentence_initial(text, m.start()) and m.group(0) in ("Budget", "National",
                                                                      "Dollar", "United"):
                continue  # "Budget airlines often charge..." starts a sentence
            if re.search(ctx, _sentence_at(text, m.start()), re.IGNORECASE):
                return m.group(0)
    for rx in (_PREFIX_RE, _SUFFIX_RE, _AIR_RE, _POSSESSIVE_RE):
        for m in rx.finditer(text):
            phrase = m.group(0)
            if (any(a < m.end() and m.start() < b for a, b in allowed)
                    or _PLACE_WORDS.search(phrase)
                    or _PLACE_WORDS.match(text, m.end() + 1)):  # "Open Air Museum"
                continue
            first = phrase.split()[0]
            if rx is _SUFFIX_RE and all(w in _GENERIC_WORDS for w in phrase.split()[:-1]):
                continue  # "Budget Hotel", "The Hotel"
            if rx is _SUFFIX_RE and first in _GENERIC_WORDS and len(phrase.split()) == 2:
                continue
            return phrase
    for rx in (_VERB_AT_RE, _BEST_IS_RE):
        for m in rx.finditer(text):
            name = m.group("name")
            if not _is_place_or_generic(name, text, m.end("name")):
                return m.group(0)
    listed = _business_list(text)
    if listed:
        return listed
    for m in _DOMAIN_RE.finditer(text):
        dom = m.group("name").lower()
        if "gov" not in dom and not dom.startswith("visit"):
            return m.group("name")
    return None


def _business_list(text: str) -> str | None:
    """A numbered or bulleted list of names introduced as hotels, restaurants, airlines..."""
    for rx in (_LIST_ITEM_RE, _INLINE_ITEM_RE):
        items = [m for m in rx.finditer(text)
                 if not _is_place_or_generic(m.group("name"), text, m.end("name"))]
        if len(items) < 2:
            continue
        intro = text[max(0, items[0].start() - 250):items[0].start()]
        item_text = text[items[0].start():items[-1].end() + 120]
        if _LIST_INTRO_RE.search(intro) or len(_LIST_INTRO_RE.findall(item_text)) >= 2:
            return f"a list of businesses: {items[0].group('name')}, {items[1].group('name')}"
    return None
