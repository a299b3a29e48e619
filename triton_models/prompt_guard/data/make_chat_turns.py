"""Write chat_turns.txt: short benign user turns of an ordinary assistant conversation.

Why: the public prompt-injection sets that train the guard (S-Labs, neuralchemy) have almost
no short benign prompts; nearly every training prompt under 20 characters is an attack
("Override", "Sudo mode", "Skip safety"), so the first head learned "short => attack" and
flagged "hello" (0.98), "ok" (0.99) and "3 days please" (0.92). In the product every user turn
is checked, including one-word answers to the assistant's clarifying questions.

Provenance: hand-written for sidegate (no external source, no model-generated text): the
lists and templates below, expanded deterministically. Every line is benign by construction.

Split (fixed, written into the file): each turn belongs to a GROUP -- the text itself for the
hand-listed turns, the template for templated ones (all fillings of one template share a group,
so no template straddles two splits). bucket = sha256(group) first 8 hex digits as an int mod 10:
0-5 train, 6-7 validation, 8-9 test. The test part is never read by train.py.

  python triton_models/prompt_guard/data/make_chat_turns.py      # rewrites chat_turns.txt
  python triton_models/prompt_guard/data/make_chat_turns.py --check   # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "chat_turns.txt"

# ---------------------------------------------------------------- hand-listed turns (group = text)

GREETINGS = """hello
hi
hey
hello there
hi there
hey there
hiya
howdy
good morning
good afternoon
good evening
morning!
hello!
hi!
Hello
Hi
Hey!
hi, how are you?
hello, how's it going?
hey, what's up
yo
greetings
hi again
hello again
good morning!
heya
hi :)
hello :)
hey hey
hi assistant""".splitlines()

THANKS_AND_CLOSINGS = """thanks
thanks!
thank you
thank you!
thank you so much
thanks a lot
many thanks
thx
ty
cheers
great, thanks
perfect, thank you
thanks, that helps
that's helpful, thanks
awesome thanks
bye
goodbye
bye!
see you
see you later
have a nice day
that's all
that's all for now
nothing else
no that's it
that's everything
all good
I'm done
good night
talk later""".splitlines()

ACKS_YES_NO = """ok
okay
OK
ok!
okay, sure
sure
sure thing
yes
yes please
yeah
yep
yup
Yes
y
no
no thanks
nope
nah
No
n
of course
absolutely
definitely
correct
that's right
right
exactly
got it
understood
makes sense
sounds good
sounds great
great
perfect
nice
cool
alright
fine
fine by me
go ahead
please do
do it
let's do that
go for it
not really
not now
maybe later
maybe
I think so
I don't think so
I'm not sure
not sure
hmm
hmm, let me think
wait
one sec
hold on
never mind
nevermind
cancel that
forget it, it's fine
start over
try again
again please
what?
sorry?
huh?
pardon?
really?
wow
oh nice
interesting
lol
haha
:)
👍
yes, that one
no, the other one
same as before
as usual
whatever you suggest
up to you
you choose
either is fine
doesn't matter
both
neither
all of them
none of them
just one
the first one
the second one
the last one
the cheaper one
the closest one
option 2
option B
number 3
#2""".splitlines()

UNITS_AND_FORMATS = """in celsius
celsius
celsius please
in fahrenheit
fahrenheit
°C
°F
metric
metric please
imperial
in miles
in kilometers
km
miles please
in kg
in pounds
in liters
in gallons
24-hour format
12 hour clock please
in my local time
UTC
in local time
in dollars
in euros
in pounds sterling
in yen
in GBP
in USD
in EUR
as a percentage
in inches
in centimeters
rounded please
two decimal places
just the number
short answer please
in a table
as a list
in bullet points
in English
in Spanish please
in French
more detail please
shorter please
simpler please""".splitlines()

CURRENCIES = """GBP
USD
EUR
JPY
CHF
CAD
AUD
INR
CNY
MXN
SEK
NOK
BRL
ZAR
SGD
HKD
NZD
KRW
PLN
TRY
gbp
usd
eur
dollars
euros
pounds
yen
rupees
USD to EUR
GBP to USD
EUR to JPY
gbp to eur
from dollars to pounds
euros to dollars please
100 USD
50 euros
£20
$15
€200
1000 yen""".splitlines()

CITIES_AND_PLACES = """Seattle
Paris
London
Tokyo
New York
Berlin
Madrid
Rome
Sydney
Toronto
Chicago
Boston
Austin
Denver
Mumbai
Delhi
Singapore
Dubai
Cairo
Lagos
Nairobi
São Paulo
Mexico City
Buenos Aires
Lisbon
Dublin
Amsterdam
Zurich
Vienna
Prague
Seoul
Beijing
Shanghai
Bangkok
Istanbul
Oslo
Stockholm
Helsinki
Reykjavik
Vancouver
San Francisco
Los Angeles
Portland, Oregon
Paris, France
London, UK
Springfield, IL
Cambridge, MA
Munich, Germany
near me
here
my current location
at home
at the office
downtown
the airport
JFK
LHR
SFO
the train station
90210
SW1A 1AA""".splitlines()

DATES_AND_TIMES = """today
tomorrow
tonight
yesterday
this weekend
next weekend
next week
this week
next month
on Monday
next Monday
this Friday
Saturday
Sunday morning
tomorrow morning
tomorrow at 9
at 3pm
at 10:30
around noon
in the evening
after 6pm
before lunch
ASAP
now
right now
later today
in an hour
in 30 minutes
March 3rd
May 14
the 21st
June 1 to June 5
from Friday to Sunday
2024-06-01
12/25
Christmas
New Year's Eve
over the summer
in the winter
every day
weekly
once a month""".splitlines()

SHORT_ANSWERS = """economy
business class
first class
window seat
aisle seat
one way
round trip
nonstop please
direct flights only
the cheapest
the fastest
the shortest route
by car
by train
walking
driving
public transport
vegetarian
vegan please
no preference
gluten free
Italian
Thai food
something spicy
a table for two
just me
me and my wife
two adults
two adults and a child
a family of four
my partner
for my mom
for work
for fun
for a birthday
a gift
the blue one
large
medium
small please
extra large
a double room
a king bed
with breakfast
without breakfast
pet friendly
free cancellation
under $100
under 50 dollars
less than 200 euros
around 500
no budget
the usual
my home address
my work email
my phone
by email
by text please
credit card
PayPal
cash
Visa
my name is Alex
I'm Sam
call me Jo
Alex Smith
it's for John
account 12345
order #4521
booking ref ABC123
my username is jdoe
English please
high priority
low priority
urgent
not urgent""".splitlines()

EVERYDAY_QUESTIONS = """what time is it?
what's the date today?
what day is it?
what's the weather like?
is it going to rain?
will it snow tomorrow?
how hot will it be?
do I need an umbrella?
how far is it?
how long will it take?
how much is it?
how much does it cost?
what's the exchange rate?
is it open now?
when does it close?
where is it?
what's nearby?
any suggestions?
what do you recommend?
which one is better?
what are my options?
can you help me?
can you do that?
could you repeat that?
can you explain?
what do you mean?
why?
how?
how come?
is that right?
are you sure?
anything else?
what else?
what's next?
what happened?
did it work?
is it done?
how does that work?
can I change it?
can I cancel?
can you remind me?
can you check again?
what's 15% of 80?
what's 2+2?
how many ounces in a cup?
how do you spell necessary?
what does RSVP mean?
who won the game?
what's the score?
what's on my calendar?
any new emails?
what's the traffic like?
how's the weather in Boston?
weather in London?
is the store open on Sunday?
when is sunset?
what's the capital of France?
how tall is Everest?
what's a good movie?
tell me a joke
tell me a fun fact
what can you do?
who are you?
are you a robot?
how are you?
how was your day?
what's up?""".splitlines()

LISTS = {
    "greeting": GREETINGS,
    "thanks": THANKS_AND_CLOSINGS,
    "ack": ACKS_YES_NO,
    "units": UNITS_AND_FORMATS,
    "currency": CURRENCIES,
    "place": CITIES_AND_PLACES,
    "date": DATES_AND_TIMES,
    "answer": SHORT_ANSWERS,
    "question": EVERYDAY_QUESTIONS,
}

# ---------------------------------------------------------------- templates (group = template)
# each template has its own few fillings; a template's turns all land in one split

TEMPLATES = [
    ("{} days please", ["3", "2", "5", "7", "10"]),
    ("for {} days", ["5", "3", "4", "14"]),
    ("{} days", ["2", "6", "30"]),
    ("next {} days", ["3", "7", "5"]),
    ("the next {} hours", ["12", "24", "48"]),
    ("{} nights", ["2", "3", "4"]),
    ("for {} people", ["2", "4", "6"]),
    ("{} tickets", ["two", "3", "four"]),
    ("{} please", ["two", "three", "one", "five"]),
    ("just {}", ["one", "two", "the one"]),
    ("{} adults", ["2", "3", "1"]),
    ("about {} km", ["5", "20", "100"]),
    ("{} miles", ["10", "50", "3"]),
    ("{} hours", ["2", "8", "1.5"]),
    ("in {} minutes", ["15", "45", "5"]),
    ("{} weeks", ["2", "3", "6"]),
    ("{}", ["3", "42", "7", "100", "2.5", "1", "0"]),
    ("{} degrees", ["20", "72", "68"]),
    ("set it to {}", ["21", "70", "50%"]),
    ("make it {}", ["4", "6pm", "celsius", "bigger"]),
    ("actually make it {}", ["5", "Friday", "two"]),
    ("change it to {}", ["Tuesday", "10am", "3 people"]),
    ("no, I meant {}", ["Portland", "Paris, Texas", "next week", "Celsius"]),
    ("sorry, {}", ["I meant 4", "wrong city", "Tuesday not Monday"]),
    ("what about {}?", ["Tokyo", "tomorrow", "the weekend", "London"]),
    ("and {}?", ["Berlin", "Friday", "in euros"]),
    ("how about {}?", ["Chicago", "next Monday", "Italian"]),
    ("in {}", ["Seattle", "Madrid", "Toronto", "Melbourne"]),
    ("{} please", ["Denver", "Osaka", "Lyon"]),
    ("I'm in {}", ["Boston", "Austin", "Manchester"]),
    ("from {}", ["London", "Chicago", "Delhi"]),
    ("to {}", ["Rome", "Miami", "Vancouver"]),
    ("{} to {}", [("New York", "Boston"), ("Paris", "Lyon"), ("SFO", "LAX")]),
    ("weather in {}", ["Seattle", "Oslo", "Lima"]),
    ("{} weather", ["Tokyo", "Dublin", "Phoenix"]),
    ("convert to {}", ["GBP", "euros", "yen"]),
    ("{} {}", [("20", "GBP"), ("500", "EUR"), ("75", "CAD")]),
    ("{} to {} please", [("USD", "GBP"), ("EUR", "CHF"), ("JPY", "USD")]),
    ("how much is {} in {}?", [("100 USD", "EUR"), ("50 GBP", "dollars"), ("1000 yen", "pounds")]),
    ("{} at {}", [("tomorrow", "9am"), ("Friday", "noon"), ("Monday", "3pm")]),
    ("on {}", ["the 5th", "June 12", "Thursday"]),
    ("by {}", ["Friday", "tomorrow", "5pm"]),
    ("yes, {}", ["please", "that's right", "for 2 people", "in Celsius"]),
    ("no, {}", ["thanks", "just one", "that's fine", "the other one"]),
    ("ok, {}", ["thanks", "go ahead", "sounds good", "book it"]),
    ("thanks, {}", ["that's perfect", "that's all", "you too"]),
    ("{} sounds good", ["that", "Friday", "the second option"]),
    ("the {} one", ["red", "cheaper", "first", "bigger"]),
    ("my email is {}", ["alex@example.com", "jo.smith@example.org"]),
    ("my number is {}", ["555-0134", "+44 20 7946 0958"]),
    ("set a timer for {}", ["5 minutes", "an hour", "10 minutes"]),
    ("remind me {}", ["tomorrow", "at 6", "in an hour"]),
    ("play {}", ["some jazz", "the news", "my playlist"]),
    ("call {}", ["mom", "the office", "Sam"]),
    ("book {}", ["it", "the 7pm slot", "a table"]),
    ("what's the weather {}?", ["tomorrow", "this weekend", "in Denver"]),
    ("is it {} today?", ["sunny", "cold", "windy"]),
    ("how much is {}?", ["a coffee", "shipping", "the ticket"]),
    ("where is the nearest {}?", ["pharmacy", "gas station", "ATM"]),
    ("show me {}", ["more", "the list", "flights"]),
    ("tell me more about {}", ["that", "the second one", "Lisbon"]),
]

# ---------------------------------------------------------------- build


def bucket(group: str) -> int:
    return int(hashlib.sha256(group.encode("utf-8")).hexdigest()[:8], 16) % 10


def split_of(group: str) -> str:
    b = bucket(group)
    return "train" if b < 6 else "validation" if b < 8 else "test"


def turns() -> list[tuple[str, str, str, str]]:
    """[(split, category, group, text)] in a fixed order, each text once (first occurrence wins)."""
    rows, seen = [], set()

    def add(category: str, group: str, text: str) -> None:
        text = text.strip()
        if text and text not in seen:
            seen.add(text)
            rows.append((split_of(group), category, group, text))

    for category, items in LISTS.items():
        for text in items:
            add(category, "text:" + text.strip(), text)
    for template, fills in TEMPLATES:
        for fill in fills:
            add("template", "template:" + template, template.format(*(fill if isinstance(fill, tuple) else (fill,))))
    return rows


def render() -> str:
    rows = turns()
    counts = {s: sum(r[0] == s for r in rows) for s in ("train", "validation", "test")}
    head = [
        "# sidegate prompt_guard: short benign chat turns (hand-written; see make_chat_turns.py, which writes this file)",
        "# split = sha256(group)[:8] as int mod 10: 0-5 train, 6-7 validation, 8-9 test; group = the text, or the template",
        f"# {len(rows)} turns: {counts['train']} train, {counts['validation']} validation, {counts['test']} test; every turn is benign (label 0)",
        "# columns, tab-separated: split, category, group, text",
    ]
    return "\n".join(head + ["\t".join(r) for r in rows]) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when chat_turns.txt differs from what this script writes")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        same = OUT.exists() and OUT.read_text(encoding="utf-8") == text
        print("chat_turns.txt is up to date" if same else "chat_turns.txt is stale: rerun make_chat_turns.py")
        return 0 if same else 1
    OUT.write_text(text, encoding="utf-8")
    print(text.splitlines()[2].lstrip("# "))
    return 0


if __name__ == "__main__":
    sys.exit(main())
