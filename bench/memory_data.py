"""Synthetic chat histories for `bench.memory`: chit-chat, and users who state facts, change them, and ask.

Everything comes from a seeded `random.Random`, so two runs see the same data. The chit-chat is
built to be hard for recall: much of it mentions the same things the facts do (cities, pets, cars,
jobs, allergens, medication) without saying anything about the user, as real chats do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from random import Random

DAY = 86400.0

SISTERS = ["Maria", "Ana", "Sofia", "Clara", "Julia", "Elena", "Greta", "Priya", "Mei", "Hannah", "Ines", "Noor"]
PARTNERS = ["Daniel", "Tom", "Lucas", "Aisha", "Emma", "Marco", "Yuki", "Sam", "Olivia", "Ravi", "Leon", "Chloe"]
KIDS = ["Leo", "Mia", "Noah", "Ava", "Ethan", "Lily", "Oscar", "Zoe", "Felix", "Ruby"]
PET_NAMES = ["Biscuit", "Luna", "Pepper", "Milo", "Nala", "Ziggy", "Mochi", "Rex", "Olive", "Pickles", "Toffee",
             "Bruno"]
PET_KINDS = ["dog", "cat", "rabbit", "parrot", "hamster", "tortoise", "beagle", "labrador", "ferret"]
CITIES = ["Porto", "Lisbon", "Berlin", "Denver", "Osaka", "Toronto", "Melbourne", "Edinburgh", "Valencia", "Seattle",
          "Lyon", "Krakow", "Austin", "Dublin", "Nairobi", "Montreal", "Bologna", "Vancouver", "Tallinn", "Kyoto"]
COUNTRIES = ["Japan", "Iceland", "Portugal", "Mexico", "Vietnam", "Greece", "Norway", "Peru", "Morocco", "Italy",
             "New Zealand", "Croatia", "Chile", "Scotland", "Thailand", "Canada"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
JOBS = ["nurse", "software engineer", "accountant", "high school teacher", "graphic designer", "pharmacist",
        "electrician", "data analyst", "architect", "paramedic", "chef", "librarian", "veterinarian", "lawyer"]
COMPANIES = ["Northwind Health", "Acme Logistics", "Bluefin Labs", "Greenleaf Bank", "Riverside Hospital",
             "Oakwood Academy", "Solaris Energy", "Pinecrest Studio", "Harbor Freight Lines", "Meridian Insurance",
             "Cobalt Robotics", "the city council"]
CARS = ["Toyota Corolla", "Honda Civic", "Ford Focus", "Volkswagen Golf", "Subaru Outback", "Mazda 3", "Tesla Model 3",
        "Kia Niro", "Skoda Octavia", "Volvo XC40", "Fiat Panda", "Nissan Leaf"]
COLOURS = ["red", "blue", "silver", "black", "white", "green", "grey"]
ALLERGENS = ["peanuts", "shellfish", "gluten", "sesame", "eggs", "tree nuts", "soy", "penicillin", "strawberries",
             "kiwi"]
INSTRUMENTS = ["piano", "violin", "guitar", "cello", "drums", "saxophone", "ukulele", "flute", "trumpet"]
SPORTS = {"running": "go running along the river", "swimming": "swim laps at the community pool",
          "cycling": "cycle to work", "yoga": "do yoga in the living room", "climbing": "go bouldering at the gym",
          "tennis": "play tennis with my neighbour", "rowing": "row on the lake with a club"}
SCHOOLS = ["Maple Street Elementary", "St. Anne's Primary", "Lakeside Montessori", "Hillcrest School",
           "Westbrook Academy", "Greenfield Primary"]
RESTAURANTS = ["Casa Lupa", "The Copper Pot", "Sakura House", "El Farolito", "Bistro Nine", "Golden Lotus",
               "Trattoria Sole", "Blue Elephant", "The Olive Tree", "Saffron Garden"]
CUISINES = ["Italian", "Thai", "Mexican", "Japanese", "Lebanese", "Indian", "Ethiopian", "Korean", "Greek"]
HOODS = ["Riverside", "the Old Town", "Greenwich", "Kreuzberg", "Brooklyn Heights", "Hillview", "the harbour district",
         "Northgate", "Elm Park", "Westside"]
MEDS = ["lisinopril", "metformin", "levothyroxine", "atorvastatin", "sertraline", "amlodipine", "omeprazole"]
CONDITIONS = ["blood pressure", "thyroid", "cholesterol", "blood sugar", "acid reflux", "anxiety"]
DIETS = ["vegetarian", "pescatarian", "vegan", "gluten-free", "keto"]
INGREDIENTS = ["chickpeas", "salmon", "tofu", "mushrooms", "spinach", "lentils", "chicken thighs", "sweet potatoes",
               "eggplant", "shrimp", "peanuts", "eggs", "rice noodles", "halloumi"]
GENRES = ["horror", "romantic comedy", "sci-fi", "documentary", "animated", "thriller", "western", "heist"]
CONCEPTS = ["inflation", "black holes", "compound interest", "photosynthesis", "blockchain", "vaccines",
            "quantum entanglement", "the electoral college", "machine learning", "plate tectonics", "jet lag"]
TASKS = ["read a CSV file", "sort a dictionary by value", "parse dates", "make an HTTP request", "write unit tests",
         "reverse a string", "merge two lists", "handle exceptions", "run code in parallel", "format a float"]
LIBS = ["pandas", "the csv module", "requests", "pytest", "datetime", "concurrent.futures", "itertools"]
LANGUAGES = ["Spanish", "Japanese", "German", "Portuguese", "French", "Korean", "Italian"]
PHRASES = ["where is the train station", "thank you very much", "I would like the bill", "good luck",
           "nice to meet you", "I'm lost"]
PLANTS = ["tomatoes", "tulip bulbs", "basil", "garlic", "sunflowers", "strawberries", "lavender"]
STAINS = ["red wine", "coffee", "grass", "ink", "olive oil", "blood"]
RELATIVES = ["sister", "brother", "mother", "cousin", "aunt", "father"]
BEHAVIOURS = ["knock things off tables", "chase their tails", "sleep so much", "eat grass", "hide when it rains",
              "stare at walls"]
ADJECTIVES = ["mild and rainy", "hot and humid", "cold and windy", "sunny and dry", "changeable", "grey but mild"]

@dataclass(frozen=True)
class Fact:
    """Something a user says about themselves, maybe said again differently later, and asked about."""

    slot: str
    first: str  # planted in an early session
    later: str | None = None  # said in a later session: replaces `first`, or adds to it when `additive`
    additive: bool = False
    questions: tuple[str, ...] = ()  # asked at the end; answered by `gold`
    memory_first: str = ""  # the same fact as a memory the assistant might keep
    memory_later: str | None = None

    @property
    def updated(self) -> bool:
        return self.later is not None and not self.additive


@dataclass
class Turn:
    role: str
    text: str
    fact: str | None = None  # slot name if this message states a fact
    stage: str = ""  # "first" or "later"


@dataclass
class Session:
    created_at: float
    turns: list[Turn] = field(default_factory=list)


@dataclass
class UserHistory:
    sessions: list[Session]
    facts: list[Fact]


def _other(rng: Random, options: list[str], taken: str) -> str:
    return rng.choice([o for o in options if o != taken])


# --- the facts: one function per kind, each picks values, phrasings and questions -------------------

def _sister(rng: Random, update: bool) -> Fact:
    name, city = rng.choice(SISTERS), rng.choice(CITIES)
    city2 = _other(rng, CITIES, city)
    first = rng.choice([f"My sister {name} lives in {city}.",
                        f"{name}, my older sister, has been living in {city} for about five years now.",
                        f"Just got off the phone with my sister {name}; she says {city} is freezing this week, "
                        "which is funny because she moved there for the sunshine."])
    later = rng.choice([f"Big news from my family: {name} moved to {city2} last weekend.",
                        f"My sister doesn't live in {city} anymore, she relocated to {city2} for a new job.",
                        f"Helped {name} unpack boxes all weekend at her new place in {city2}."])
    return Fact("sister", first, later if update else None,
                questions=("Where does my sister live?", "Which city is my sibling based in these days?",
                           f"If I wanted to visit {name}, where would I have to travel?"),
                memory_first=f"The user's sister {name} lives in {city}.",
                memory_later=f"The user's sister {name} lives in {city2}.")


def _pets(rng: Random, update: bool) -> Fact:
    kind, pet = rng.choice(PET_KINDS), rng.choice(PET_NAMES)
    kind2, pet2 = _other(rng, PET_KINDS, kind), _other(rng, PET_NAMES, pet)
    first = rng.choice([f"Our first pet, a {kind} called {pet}, came from the shelter last month.",
                        f"My {kind} {pet} chewed through another charger cable this morning.",
                        f"I have a {kind} named {pet} who sleeps on my keyboard whenever I work from home."])
    later = rng.choice([f"We got a second pet! A little {kind2} named {pet2}.",
                        f"Say hello to {pet2}, the {kind2} we brought home yesterday. {pet} is jealous already."])
    return Fact("pets", first, later if update else None, additive=True,
                questions=("What pets do I have?", "Which animals live with me?", "What are my pets called?"),
                memory_first=f"The user has a {kind} named {pet}.",
                memory_later=f"The user also has a {kind2} named {pet2}.")


def _job(rng: Random, update: bool) -> Fact:
    job, company = rng.choice(JOBS), rng.choice(COMPANIES)
    job2, company2 = _other(rng, JOBS, job), _other(rng, COMPANIES, company)
    first = rng.choice([f"I work as a {job} at {company}.",
                        f"Another twelve-hour shift at work today. Being a {job} at {company} is exhausting.",
                        f"I've been a {job} at {company} since I finished university, my first real job."])
    later = rng.choice([f"I finally did it: I accepted a job offer to be a {job2} at {company2}, starting Monday.",
                        f"Quick update, I left {company} and now work as a {job2} for {company2}."])
    return Fact("job", first, later if update else None,
                questions=("Where do I work?", "What do I do for a living?", "What's my job these days?"),
                memory_first=f"The user works as a {job} at {company}.",
                memory_later=f"The user works as a {job2} at {company2}.")


def _allergies(rng: Random, update: bool) -> Fact:
    allergen = rng.choice(ALLERGENS)
    allergen2 = _other(rng, ALLERGENS, allergen)
    first = rng.choice([f"I'm allergic to {allergen}, so please keep that in mind for recipes.",
                        f"Had a reaction at lunch again; I really need to be more careful about {allergen}, "
                        "I'm so allergic.",
                        f"The doctor confirmed my {allergen} allergy yesterday."])
    later = rng.choice([f"Turns out I'm also allergic to {allergen2}, the tests came back positive.",
                        f"Add {allergen2} to the list of things I can't have, says my allergist."])
    return Fact("allergies", first, later if update else None, additive=True,
                questions=("What am I allergic to?", "Which foods or substances should I stay away from?",
                           "Is there anything that gives me a bad reaction?"),
                memory_first=f"The user is allergic to {allergen}.",
                memory_later=f"The user is also allergic to {allergen2}.")


def _car(rng: Random, update: bool) -> Fact:
    colour, car = rng.choice(COLOURS), rng.choice(CARS)
    car2 = _other(rng, CARS, car)
    first = rng.choice([f"I drive a {colour} {car}.",
                        f"My {colour} {car} is in the garage again, the car needs new brakes.",
                        f"I've had my {car} for six years and it still runs great."])
    later = rng.choice([f"I sold my old car and I'm driving a {car2} now!",
                        f"Picked up my new {car2} from the dealer today, the old {car} is gone."])
    return Fact("car", first, later if update else None,
                questions=("What car do I drive?", "What vehicle do I own at the moment?",
                           "Which car am I driving now?"),
                memory_first=f"The user drives a {car}.", memory_later=f"The user drives a {car2}.")


def _instrument(rng: Random, update: bool) -> Fact:
    instrument = rng.choice(INSTRUMENTS)
    instrument2 = _other(rng, INSTRUMENTS, instrument)
    first = rng.choice([f"I've been taking {instrument} lessons every Tuesday evening.",
                        f"Practised the {instrument} for an hour tonight, my fingers hurt.",
                        f"I started learning the {instrument} in January."])
    later = rng.choice([f"I gave up on the {instrument}; I'm learning the {instrument2} now.",
                        f"New hobby: {instrument2} lessons. The {instrument} is collecting dust."])
    return Fact("instrument", first, later if update else None,
                questions=("Which instrument am I learning?", "What music lessons am I taking?",
                           "What do I practise in the evenings?"),
                memory_first=f"The user is learning the {instrument}.",
                memory_later=f"The user is learning the {instrument2}.")


def _trip(rng: Random, update: bool) -> Fact:
    country, month = rng.choice(COUNTRIES), rng.choice(MONTHS)
    country2 = _other(rng, COUNTRIES, country)
    first = rng.choice([f"I'm planning a trip to {country} in {month}.",
                        f"We booked flights to {country} for {month}, I can't wait!",
                        f"Do you have tips for {country}? We're going there in {month}."])
    later = rng.choice([f"Change of plans: we cancelled {country} and are travelling to {country2} instead.",
                        f"Our holiday is now in {country2}; the {country} trip fell through."])
    return Fact("trip", first, later if update else None,
                questions=("Where am I going on holiday?", "What's my next vacation destination?",
                           "Which country are we travelling to this year?"),
                memory_first=f"The user plans a trip to {country} in {month}.",
                memory_later=f"The user plans a trip to {country2} in {month}.")


def _partner(rng: Random, update: bool) -> Fact:
    relation, name, job = rng.choice(["husband", "wife", "partner"]), rng.choice(PARTNERS), rng.choice(JOBS)
    first = rng.choice([f"My {relation} {name} is a {job}.",
                        f"My {relation} {name} surprised me with dinner tonight.",
                        f"{name}, my {relation}, says I work too much."])
    return Fact("partner", first,
                questions=(f"What's my {relation}'s name?", "Who is my significant other?",
                           "Who do I share my life with?"),
                memory_first=f"The user's {relation} is called {name}.")


def _diet(rng: Random, update: bool) -> Fact:
    diet = rng.choice(DIETS[:2])
    first = rng.choice([f"I've been on a {diet} diet since 2019.",
                        f"As a {diet}, I'm always hunting for new protein ideas."])
    later, memory_later = rng.choice([
        ("I switched to a vegan diet last month, no more cheese for me.", "The user is vegan."),
        (f"I'm not {diet} anymore, I started eating meat again on my doctor's advice.", "The user eats meat again."),
    ])
    return Fact("diet", first, later if update else None,
                questions=("What kind of diet am I on?", "Do I eat meat?", "Are there foods I skip by choice?"),
                memory_first=f"The user is {diet}.", memory_later=memory_later)


def _birthday(rng: Random, update: bool) -> Fact:
    month, day = rng.choice(MONTHS), rng.randint(1, 28)
    first = rng.choice([f"My birthday is on {month} {day}.",
                        f"I turn forty on {month} {day}, trying not to think about it.",
                        f"Can you help me plan a party? My birthday is {month} {day}."])
    return Fact("birthday", first,
                questions=("When is my birthday?", "What date was I born on?",
                           "On which day should you wish me many happy returns?"),
                memory_first=f"The user's birthday is {month} {day}.")


def _exercise(rng: Random, update: bool) -> Fact:
    sport = rng.choice(list(SPORTS))
    sport2 = _other(rng, list(SPORTS), sport)
    first = rng.choice([f"I {SPORTS[sport]} three times a week to get some exercise.",
                        f"My workout routine: I {SPORTS[sport]} every Saturday morning."])
    later = rng.choice([f"My knee is bad, so for exercise I switched from {sport} to {sport2}.",
                        f"The physio told me to stop {sport}; now I {SPORTS[sport2]} instead."])
    return Fact("exercise", first, later if update else None,
                questions=("What exercise do I do?", "How do I keep fit?", "What does my workout routine look like?"),
                memory_first=f"The user's exercise is {sport}.", memory_later=f"The user's exercise is {sport2}.")


def _school(rng: Random, update: bool) -> Fact:
    kid, school = rng.choice(KIDS), rng.choice(SCHOOLS)
    child, pronoun = rng.choice([("son", "his"), ("daughter", "her")])
    first = rng.choice([f"My {child} {kid} just started at {school}.",
                        f"{kid} had {pronoun} first day at {school} today and loved it."])
    return Fact("school", first,
                questions=(f"Which school does my {child} go to?", f"Where does {kid} study?",
                           "Where do I drop my kid off in the mornings?"),
                memory_first=f"The user's {child} {kid} goes to {school}.")


def _restaurant(rng: Random, update: bool) -> Fact:
    place, cuisine = rng.choice(RESTAURANTS), rng.choice(CUISINES)
    place2, cuisine2 = _other(rng, RESTAURANTS, place), _other(rng, CUISINES, cuisine)
    first = rng.choice([f"My favourite restaurant is {place}, a little {cuisine} place near my flat.",
                        f"We went to {place} again, best {cuisine} food in town."])
    later = rng.choice([f"I have a new favourite spot: {place2}, they do amazing {cuisine2} dishes.",
                        f"Honestly {place2} has replaced {place} as my go-to restaurant."])
    return Fact("restaurant", first, later if update else None,
                questions=("What's my favourite restaurant?", "Where do I like to eat out?",
                           "Which place would I pick for a dinner date?"),
                memory_first=f"The user's favourite restaurant is {place}.",
                memory_later=f"The user's favourite restaurant is {place2}.")


def _home(rng: Random, update: bool) -> Fact:
    hood = rng.choice(HOODS)
    hood2 = _other(rng, HOODS, hood)
    first = rng.choice([f"We live in a two-bedroom flat in {hood}.",
                        f"Our apartment in {hood} is tiny but it feels like home."])
    later = rng.choice([f"We finally moved into a house in {hood2}!",
                        f"Moving day is over, our new home is in {hood2}."])
    return Fact("home", first, later if update else None,
                questions=("Where do I live?", "Which neighbourhood is my home in?", "Where is home for me now?"),
                memory_first=f"The user lives in {hood}.", memory_later=f"The user lives in {hood2}.")


def _medication(rng: Random, update: bool) -> Fact:
    med, condition = rng.choice(MEDS), rng.choice(CONDITIONS)
    med2 = _other(rng, MEDS, med)
    first = rng.choice([f"I take {med} every morning for my {condition}.",
                        f"Just refilled my {med} prescription, the pharmacy was packed."])
    later = rng.choice([f"My doctor switched me from {med} to {med2} for my {condition}.",
                        f"I'm on {med2} now instead of {med}, fewer side effects so far."])
    return Fact("medication", first, later if update else None,
                questions=(f"What do I take for my {condition}?", "Which pills do I swallow each day?",
                           "What did my doctor prescribe me?"),
                memory_first=f"The user takes {med}.", memory_later=f"The user takes {med2}.")


# Each makes a fact, changed (or added to) later when its second argument is true.
FACT_KINDS: dict[str, Callable[[Random, bool], Fact]] = {
    "sister": _sister, "pets": _pets, "job": _job, "allergies": _allergies, "car": _car, "instrument": _instrument,
    "trip": _trip, "partner": _partner, "diet": _diet, "birthday": _birthday, "exercise": _exercise,
    "school": _school, "restaurant": _restaurant, "home": _home, "medication": _medication,
}
_NEVER_CHANGE = {"partner", "birthday", "school"}

_ACKS = ["That's good to know, thanks for telling me.", "Got it! I'll keep that in mind.",
         "Oh, how exciting! How are you feeling about it?", "Thanks for sharing that.",
         "That sounds like a big change. Let me know if I can help with anything.",
         "Noted. Is there anything you'd like me to do with that?"]
_FACT_PREFIXES = ["", "", "", "Long day. ", "Random thing, but ", "Before I forget: ", "Oh and ", "So, "]
_FACT_SUFFIXES = ["", "", "", " Anyway, what should I cook tonight?", " Anyway, how are you?",
                  " Not sure why I'm telling you this.", " Life is busy!"]


# --- chit-chat: (user, assistant) pairs on everyday topics ---------------------------------------

def _weather(rng: Random) -> tuple[str, str]:
    city, month = rng.choice(CITIES), rng.choice(MONTHS)
    return (f"What's the weather usually like in {city} in {month}?",
            f"In {month}, {city} tends to be {rng.choice(ADJECTIVES)}. Pack layers and check the forecast a few days "
            "before you go.")


def _recipe(rng: Random) -> tuple[str, str]:
    a, b = rng.sample(INGREDIENTS, 2)
    return (rng.choice([f"Can you give me a quick recipe with {a} and {b}?", f"What can I make with leftover {a}?"]),
            f"Try a one-pan {a} and {b} dish: brown the {a}, add garlic, {b} and a splash of stock, then simmer "
            f"for {rng.randint(10, 30)} minutes and season to taste.")


def _code(rng: Random) -> tuple[str, str]:
    task, lib = rng.choice(TASKS), rng.choice(LIBS)
    return (f"How do I {task} in Python?",
            f"The simplest way to {task} is with {lib}. Here's the idea: import it, call the function on your data, "
            "and check the result with a small example first.")


def _movie(rng: Random) -> tuple[str, str]:
    genre = rng.choice(GENRES)
    return (rng.choice([f"Recommend a {genre} movie for tonight.",
                        f"What's a good {genre} film to watch with friends?"]),
            f"For a {genre} night, pick something well reviewed and under two hours; classics of the genre are a safe "
            "bet if you haven't seen them.")


def _concept(rng: Random) -> tuple[str, str]:
    concept = rng.choice(CONCEPTS)
    return (rng.choice([f"Explain {concept} like I'm five.", f"Can you give me a short summary of {concept}?"]),
            f"Think of {concept} as a simple idea with big effects: start from one everyday example and build up "
            "from there. Want a more detailed version?")


def _sights(rng: Random) -> tuple[str, str]:
    country = rng.choice(COUNTRIES)
    return (rng.choice([f"What are the must-see sights in {country}?", f"Is {country} expensive for tourists?"]),
            f"{country} rewards slow travel: pick two or three regions, book trains early, and leave a free day for "
            "wandering.")


def _animal(rng: Random) -> tuple[str, str]:
    kind, behaviour = rng.choice(PET_KINDS), rng.choice(BEHAVIOURS)
    return (f"Why do {kind}s {behaviour}?",
            f"Most {kind}s {behaviour} out of instinct, boredom or to get attention. More play and routine usually "
            "help.")


def _car_care(rng: Random) -> tuple[str, str]:
    car = rng.choice(CARS)
    return (rng.choice([f"How often should a {car} get an oil change?", f"Is the {car} reliable in winter?"]),
            f"Check the {car} owner's manual, but as a rule of thumb service it once a year and keep the tyres at "
            "the right pressure.")


def _career(rng: Random) -> tuple[str, str]:
    job = rng.choice(JOBS)
    return (rng.choice([f"What skills does a {job} need?", f"How much does a {job} earn on average?"]),
            f"A good {job} needs patience, communication and solid training; pay varies a lot by country and "
            "experience.")


def _music(rng: Random) -> tuple[str, str]:
    instrument = rng.choice(INSTRUMENTS)
    return (rng.choice([f"Who are some famous {instrument} players?", f"Is the {instrument} hard to learn as an "
                                                                       "adult?"]),
            f"The {instrument} takes steady practice; twenty minutes a day beats two hours once a week.")


def _side_effects(rng: Random) -> tuple[str, str]:
    med = rng.choice(MEDS)
    return (f"What are common side effects of {med}?",
            f"Common side effects of {med} include headaches and nausea; ask a pharmacist about anything that "
            "worries you.")


def _allergen_foods(rng: Random) -> tuple[str, str]:
    allergen = rng.choice(ALLERGENS)
    return (f"Which foods commonly contain {allergen}?",
            f"{allergen.capitalize()} can hide in sauces, baked goods and snacks; always read the label.")


def _fitness(rng: Random) -> tuple[str, str]:
    sport = rng.choice(list(SPORTS))
    return (rng.choice([f"Is {sport} good for lower back pain?", f"How many calories does an hour of {sport} burn?"]),
            f"{sport.capitalize()} is generally good exercise; start gently and stop if anything hurts.")


def _friend_visit(rng: Random) -> tuple[str, str]:
    relative, city = rng.choice(RELATIVES), rng.choice(CITIES)
    return (f"My friend's {relative} is visiting {city} next week. Any restaurant suggestions?",
            f"In {city}, look for a busy local {rng.choice(CUISINES)} place away from the main square; locals know "
            "best.")


def _language(rng: Random) -> tuple[str, str]:
    language, phrase = rng.choice(LANGUAGES), rng.choice(PHRASES)
    return (f"How do you say '{phrase}' in {language}?",
            f"In {language} you'd say it fairly directly; I can write out the pronunciation if that helps.")


def _garden(rng: Random) -> tuple[str, str]:
    plant = rng.choice(PLANTS)
    return (f"When should I plant {plant}?",
            f"Plant {plant} after the last frost, in a sunny spot with well-drained soil, and water them regularly.")


def _stain(rng: Random) -> tuple[str, str]:
    stain = rng.choice(STAINS)
    return (f"How do I get {stain} out of a cotton shirt?",
            f"Blot the {stain} stain, rinse with cold water from the back, then use a little dish soap before "
            "washing.")


def _school_talk(rng: Random) -> tuple[str, str]:
    country = rng.choice(COUNTRIES)
    return (f"How do schools in {country} grade students?",
            f"Schools in {country} use their own grading scale; I can compare it with another system if you like.")


def _maths(rng: Random) -> tuple[str, str]:
    a, b = rng.randint(12, 99), rng.randint(12, 99)
    return f"What's {a} times {b}?", f"{a} times {b} is {a * b}."


def _small_talk(rng: Random) -> tuple[str, str]:
    return rng.choice([
        ("Good morning! I barely slept last night.", "Good morning! Sorry to hear that. Coffee first, then tasks?"),
        ("Thanks, that really helped.", "Glad it helped! Anything else?"),
        ("I'm bored. Tell me a fun fact.", "Octopuses have three hearts and blue blood."),
        ("Ugh, Mondays.", "Mondays are rough. What's on your plate this week?"),
        ("Can you make that shorter?", "Sure, here's a shorter version."),
        ("Write me a haiku about rain.", "Soft rain on the roof / the kettle hums its answer / the day can wait now"),
        ("What should I name my new plant?", "How about Fernando? Every fern deserves a dramatic name."),
        ("I have a job interview tomorrow and I'm nervous.",
         "That's normal. Prepare three stories about your work and get a good night's sleep."),
    ])


def _email(rng: Random) -> tuple[str, str]:
    problem = rng.choice(["broken heating", "leaking tap", "noisy neighbours", "mould in the bathroom", "late deposit"])
    return (f"Help me write an email to my landlord about the {problem}.",
            f"Here's a draft: 'Hello, I'm writing about the {problem} in my flat. Could you arrange a repair this "
            "week? Thank you.'")


CHIT_CHAT: list[Callable[[Random], tuple[str, str]]] = [
    _weather, _recipe, _code, _movie, _concept, _sights, _animal, _car_care, _career, _music, _side_effects,
    _allergen_foods, _fitness, _friend_visit, _language, _garden, _stain, _school_talk, _maths, _small_talk, _email,
]


def chit_chat(rng: Random) -> tuple[str, str]:
    return rng.choice(CHIT_CHAT)(rng)


def chit_chat_pool(rng: Random, pairs: int) -> list[tuple[str, str]]:
    """`pairs` different (user, assistant) exchanges."""
    seen: set[str] = set()
    pool: list[tuple[str, str]] = []
    while len(pool) < pairs:
        pair = chit_chat(rng)
        if pair[0] not in seen:
            seen.add(pair[0])
            pool.append(pair)
    return pool


def memory_sentence(rng: Random) -> str:
    """A memory of the kind Cleo keeps, for filling a large memories table."""
    fact = FACT_KINDS[rng.choice(list(FACT_KINDS))](rng, True)
    return fact.memory_later if fact.memory_later and rng.random() < 0.5 else fact.memory_first


def user_history(rng: Random, *, now: float, sessions: int = 8, turns: int = 10, facts: int = 12,
                 update_share: float = 0.45) -> UserHistory:
    """One user's chats: `sessions` dated a week apart, ending a day before `now`, with facts stated early
    (first half of the sessions) and changed or added to later (second half)."""
    planted = [FACT_KINDS[slot](rng, slot not in _NEVER_CHANGE and rng.random() < update_share)
               for slot in rng.sample(list(FACT_KINDS), facts)]
    start = now - DAY - 7 * DAY * (sessions - 1)
    history = [Session(start + 7 * DAY * i + rng.uniform(0, DAY / 2)) for i in range(sessions)]
    for session in history:
        for _ in range(turns):
            user, assistant = chit_chat(rng)
            session.turns += [Turn("user", user), Turn("assistant", assistant)]
    half = sessions // 2
    for fact in planted:
        _insert(rng, history[rng.randrange(half)], fact.first, fact.slot, "first")
        if fact.later is not None:
            _insert(rng, history[rng.randrange(half, sessions)], fact.later, fact.slot, "later")
    return UserHistory(history, planted)


def _insert(rng: Random, session: Session, statement: str, slot: str, stage: str) -> None:
    """A fact said in passing, at a turn boundary of the session, with the assistant's acknowledgement."""
    text = rng.choice(_FACT_PREFIXES) + statement + rng.choice(_FACT_SUFFIXES)
    at = 2 * rng.randrange(len(session.turns) // 2 + 1)
    session.turns[at:at] = [Turn("user", text, slot, stage), Turn("assistant", rng.choice(_ACKS))]
