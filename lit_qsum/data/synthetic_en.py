"""English topic renderers for the synthetic DialogSum-style corpus (driven by ``synthetic.py``).

Each renderer draws its entities from ``rng`` and returns the core turns (even positions are
``#Person1#``, odd ones ``#Person2#``) and a one-sentence summary that carries the decision.
Several renderers let the first proposal be turned down, so the summary must copy the value that
was agreed, not the first one mentioned.
"""

from __future__ import annotations

import random
from collections.abc import Callable

Render = Callable[[random.Random], tuple[list[str], str]]

NAMES = ["Tom", "Anna", "David", "Sarah", "Kevin", "Linda", "Mike", "Emma", "Jack", "Olivia",
         "Daniel", "Grace", "Peter", "Sophie", "Mr. Smith", "Ms. Lee", "Mrs. Park", "Mr. Chen"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight"]


def clock(hour: int, minute: int) -> str:
    """Formats a 24-hour time as ``7 pm`` or ``10:30 am``."""
    suffix = "am" if hour < 12 else "pm"
    h12 = hour % 12 or 12
    return f"{h12} {suffix}" if minute == 0 else f"{h12}:{minute:02d} {suffix}"


def _two_days(rng: random.Random) -> tuple[str, str]:
    first, second = rng.sample(DAYS, 2)
    return first, second


def appointment(rng: random.Random) -> tuple[list[str], str]:
    provider = rng.choice(["Dr. Kim", "Dr. Brown", "the dentist", "Dr. Patel", "the eye doctor"])
    reason = rng.choice(["a check-up", "a toothache", "a sore throat", "back pain", "a skin rash"])
    name = rng.choice(NAMES)
    asked, day = _two_days(rng)
    time = clock(rng.choice([9, 10, 11, 14, 15, 16]), rng.choice([0, 30]))
    turns = [f"Hello, I'd like to see {provider} about {reason}."]
    if rng.random() < 0.5:
        turns += [f"I'm sorry, {asked} is fully booked. Would {day} at {time} suit you?",
                  f"Yes, {day} at {time} is fine."]
    else:
        turns += ["Of course. When would you like to come in?", f"{day} at {time}, if possible."]
    turns += ["That works. May I have your name, please?", f"It's {name}.",
              f"Thank you, {name}. See you on {day} at {time}."]
    summary = rng.choice([
        f"#Person1# makes an appointment with {provider} for {day} at {time}.",
        f"{name} will see {provider} about {reason} on {day} at {time}.",
        f"#Person2# books #Person1# in with {provider} on {day} at {time}.",
    ])
    return turns, summary


def restaurant(rng: random.Random) -> tuple[list[str], str]:
    place = rng.choice(["Luigi's", "the Golden Dragon", "Blue Ocean", "Cafe Rosa", "Seoul Garden",
                        "The Green Table", "Han River Grill"])
    name = rng.choice(NAMES)
    party = rng.randint(2, 8)
    day = rng.choice(DAYS)
    asked, time = rng.sample([clock(h, m) for h in (18, 19, 20) for m in (0, 30)], 2)
    turns = [f"Good evening, {place}. How can I help you?",
             f"Hi, I'd like to book a table for {party} on {day}."]
    if rng.random() < 0.5:
        turns += [f"I'm afraid {asked} is taken. We have a table at {time}.", f"{time} is fine."]
    else:
        turns += ["Certainly. What time would you like?", f"{time}, please."]
    turns += ["Could I have your name?", f"It's {name}.",
              f"Thank you, {name}. A table for {NUMBER_WORDS[party]} on {day} at {time}."]
    # Sometimes the caller speaks first, which swaps who is #Person1#.
    caller_first = rng.random() < 0.3
    turns = turns[1:] if caller_first else turns
    caller = "#Person1#" if caller_first else "#Person2#"
    summary = rng.choice([
        f"{caller} books a table for {party} at {place} on {day} at {time}.",
        f"{name} reserves a table for {party} people at {place} for {day} at {time}.",
    ])
    return turns, summary


def food_order(rng: random.Random) -> tuple[list[str], str]:
    shop = rng.choice(["Pizza Hub", "Noodle House", "Burger Barn", "Taco Town", "Kimbap Corner"])
    food, foods = rng.choice([("pizza", "pizzas"), ("burger", "burgers"), ("noodle soup", "noodle soups"),
                              ("chicken wrap", "chicken wraps"), ("kimbap roll", "kimbap rolls")])
    drink = rng.choice(["cola", "lemonade", "iced tea", "orange juice"])
    qty = rng.randint(1, 5)
    price = rng.randint(8, 60)
    minutes = rng.choice([20, 25, 30, 40, 45])
    address = f"{rng.randint(10, 299)} {rng.choice(['Oak', 'Pine', 'Maple', 'Hill', 'River'])} Street"
    item = food if qty == 1 else foods
    article = "an" if drink[0] in "aeiou" else "a"
    turns = [f"Hello, is this {shop}? I'd like to order {qty} {item} and {article} {drink}.",
             "Sure. Anything else?", "No, that's all. Can you deliver it?",
             "Yes. What's the address?", f"{address}.",
             f"Okay, that's {price} dollars in total. It will arrive in about {minutes} minutes."]
    summary = rng.choice([
        f"#Person1# orders {qty} {item} and {article} {drink} from {shop} for {price} dollars.",
        f"#Person1# orders {qty} {item} to {address}, which will arrive in {minutes} minutes.",
    ])
    return turns, summary


def travel(rng: random.Random) -> tuple[list[str], str]:
    city = rng.choice(["Busan", "Tokyo", "Paris", "London", "Jeju", "Rome", "Bangkok", "Boston"])
    mode = rng.choice(["train", "bus", "flight"])
    tickets = rng.randint(1, 4)
    day = rng.choice(DAYS)
    asked, time = rng.sample([clock(h, m) for h in (7, 8, 9, 13, 15, 17) for m in (0, 30)], 2)
    price = rng.randint(2, 40) * 10
    turns = [f"I need {tickets} {mode} ticket{'s' if tickets > 1 else ''} to {city} for {day}, please."]
    if rng.random() < 0.5:
        turns += [f"The {asked} {mode} is sold out. There are seats on the {time} one.", "I'll take those."]
    else:
        turns += ["Which departure would you like?", f"The {time} one."]
    turns += [f"That will be {price} dollars.", "Here's my card."]
    summary = rng.choice([
        f"#Person1# buys {tickets} {mode} ticket{'s' if tickets > 1 else ''} to {city} for {day} at {time}.",
        f"#Person1# pays {price} dollars for the {time} {mode} to {city} on {day}.",
    ])
    return turns, summary


def hotel(rng: random.Random) -> tuple[list[str], str]:
    hotel_name = rng.choice(["Grand Hotel", "Sea View Inn", "Plaza Hotel", "Mountain Lodge", "City Stay"])
    room = rng.choice(["single", "double", "twin", "family"])
    nights = rng.randint(1, 6)
    day = rng.choice(DAYS)
    rate = rng.randint(6, 30) * 10
    turns = [f"Welcome to the {hotel_name}. Do you have a reservation?",
             f"No, I'd like a {room} room for {nights} night{'s' if nights > 1 else ''}, starting {day}.",
             f"We have one. It's {rate} dollars a night. Breakfast is included.",
             "Great, I'll take it.", "May I see your ID, please?", "Here you are.",
             f"Thank you. Check-out is at {clock(rng.choice([10, 11, 12]), 0)}. Enjoy your stay."]
    guest = "#Person2#"
    summary = rng.choice([
        f"{guest} books a {room} room at the {hotel_name} for {nights} night{'s' if nights > 1 else ''} from {day}.",
        f"{guest} takes a {room} room for {rate} dollars a night starting {day}.",
    ])
    return turns, summary


def complaint(rng: random.Random) -> tuple[list[str], str]:
    item = rng.choice(["coffee maker", "jacket", "phone charger", "desk lamp", "backpack", "kettle"])
    problem = rng.choice(["broken", "the wrong size", "missing a part", "scratched"])
    day = rng.choice(DAYS)
    offered, remedy = rng.sample(["a full refund", "an exchange", "a free repair", "store credit"], 2)
    turns = [f"Excuse me, I bought this {item} here on {day}, but it's {problem}.",
             "I'm sorry to hear that. Do you have the receipt?", "Yes, here it is."]
    if rng.random() < 0.5:
        turns += [f"We can offer {offered}.", f"I'd rather have {remedy}.", f"All right, {remedy} it is."]
    else:
        turns += [f"Then we can give you {remedy}.", "Thank you, that would be great."]
    summary = rng.choice([
        f"#Person1# complains that the {item} bought on {day} is {problem} and gets {remedy}.",
        f"#Person2# agrees to give #Person1# {remedy} for the {problem} {item}."
        if problem != "the wrong size" else f"#Person2# gives #Person1# {remedy} for the {item}.",
    ])
    return turns, summary


def shopping(rng: random.Random) -> tuple[list[str], str]:
    item, items = rng.choice([("shirt", "shirts"), ("mug", "mugs"), ("notebook", "notebooks"),
                              ("scarf", "scarves"), ("umbrella", "umbrellas"), ("candle", "candles")])
    other, color = rng.sample(["blue", "red", "black", "white", "green"], 2)
    qty = rng.randint(2, 6)
    unit = rng.randint(3, 40)
    discount = rng.choice([10, 15, 20, 25])
    total = qty * unit * (100 - discount) // 100
    turns = [f"Do you have this {item} in {other}?", f"Sorry, we only have {color} ones left.",
             f"How much are the {color} {items}?", f"They're {unit} dollars each.",
             f"If I buy {qty}, can I get a discount?",
             f"Sure, {discount} percent off. That comes to {total} dollars.", "Deal. I'll take them."]
    summary = rng.choice([
        f"#Person1# buys {qty} {color} {items} for {total} dollars after a {discount} percent discount.",
        f"#Person2# sells #Person1# {qty} {items} at {discount} percent off, {total} dollars in total.",
    ])
    return turns, summary


def meeting(rng: random.Random) -> tuple[list[str], str]:
    event = rng.choice(["team meeting", "project review", "budget meeting", "client call", "training session"])
    boss = rng.choice(NAMES)
    old, new = _two_days(rng)
    time = clock(rng.choice([9, 10, 11, 13, 14, 15, 16]), rng.choice([0, 30]))
    room = rng.choice(["Room 3", "Room 5", "Room 7", "the small conference room", "the lobby cafe"])
    turns = [f"{boss} can't make the {event} on {old}. Can we move it?",
             f"How about {new} at {time}?", "That works for me. Where?",
             f"Let's use {room}.", f"Okay, I'll tell {boss} it's {new} at {time} in {room}."]
    summary = rng.choice([
        f"#Person1# and #Person2# move the {event} from {old} to {new} at {time}.",
        f"The {event} is moved to {new} at {time} in {room} because {boss} is busy on {old}.",
    ])
    return turns, summary


TOPICS: dict[str, Render] = {
    "appointment": appointment, "restaurant": restaurant, "food_order": food_order, "travel": travel,
    "hotel": hotel, "complaint": complaint, "shopping": shopping, "meeting": meeting,
}
# Small talk the driver may wrap around a dialogue whose #Person1# opens the conversation.
OPENER_TOPICS = {"appointment", "travel", "shopping", "meeting"}
OPENERS = [("Hi there.", "Hello! What can I do for you?"), ("Good morning.", "Good morning. How can I help?"),
           ("Excuse me, do you have a minute?", "Sure, what is it?")]
CLOSERS = ["Thanks a lot.", "Great, thank you.", "Thanks, see you then.", "Perfect. Bye."]
