"""Word lists the toy domains draw from (fixed: changing them changes every build)."""

from __future__ import annotations

# (name, pronoun) for word problems
PEOPLE = (
    ("Tom", "He"), ("Anna", "She"), ("Ben", "He"), ("Mia", "She"), ("Sam", "He"), ("Lily", "She"),
    ("Max", "He"), ("Emma", "She"), ("Leo", "He"), ("Zoe", "She"), ("Jack", "He"), ("Ella", "She"),
    ("Noah", "He"), ("Ava", "She"), ("Finn", "He"), ("Ruby", "She"),
)

OBJECTS = (
    "apples", "pens", "books", "cookies", "marbles", "stickers", "cards", "shells",
    "coins", "flowers", "eggs", "balls", "toys", "cups", "stamps", "candies",
)

# topic -> (subject phrase, adjectives, things it does, what people do with it)
TOPICS = {
    "cats": ("a cat", ("small", "soft", "quiet", "curious"), ("sleeps in the sun", "chases a ball", "drinks milk"), "keep them as pets"),
    "dogs": ("a dog", ("loyal", "happy", "strong", "friendly"), ("runs in the park", "guards the house", "plays with a stick"), "walk them every day"),
    "the sea": ("the sea", ("wide", "deep", "blue", "cold"), ("moves with the tide", "hides many fish", "shines in the sun"), "swim in it in summer"),
    "rain": ("rain", ("wet", "cool", "soft", "grey"), ("falls from the clouds", "fills the rivers", "helps the plants grow"), "carry an umbrella"),
    "apples": ("an apple", ("sweet", "round", "red", "crisp"), ("grows on a tree", "falls in autumn", "fits in a hand"), "eat them as a snack"),
    "trains": ("a train", ("long", "fast", "loud", "heavy"), ("runs on rails", "carries many people", "stops at every town"), "ride them to work"),
    "the moon": ("the moon", ("bright", "round", "pale", "distant"), ("lights the night", "pulls the tides", "changes its shape"), "look at it at night"),
    "bread": ("bread", ("warm", "soft", "fresh", "brown"), ("comes from the oven", "is made from flour", "smells good"), "eat it every morning"),
    "bees": ("a bee", ("busy", "small", "yellow", "tireless"), ("makes honey", "visits flowers", "lives in a hive"), "keep them for honey"),
    "books": ("a book", ("thick", "old", "useful", "quiet"), ("tells a story", "sits on a shelf", "teaches new words"), "read them before bed"),
    "trees": ("a tree", ("tall", "green", "old", "strong"), ("gives shade", "grows from a seed", "drops its leaves"), "plant them in parks"),
    "rivers": ("a river", ("long", "calm", "clear", "wide"), ("flows to the sea", "turns a mill", "feeds the fields"), "fish in them"),
    "snow": ("snow", ("white", "cold", "soft", "bright"), ("covers the ground", "falls in winter", "melts in spring"), "build snowmen"),
    "bikes": ("a bike", ("light", "quick", "cheap", "simple"), ("has two wheels", "needs no fuel", "fits on a path"), "ride them to school"),
    "tea": ("tea", ("hot", "calm", "green", "bitter"), ("comes from leaves", "warms the hands", "is served in cups"), "drink it with friends"),
    "gardens": ("a garden", ("green", "quiet", "neat", "colorful"), ("grows vegetables", "attracts birds", "needs water"), "work in them on weekends"),
    "owls": ("an owl", ("wise", "silent", "brown", "patient"), ("hunts at night", "turns its head", "sleeps by day"), "listen for them at dusk"),
    "markets": ("a market", ("busy", "loud", "cheerful", "crowded"), ("sells fresh food", "opens early", "fills the square"), "shop there on Saturday"),
    "music": ("music", ("joyful", "calm", "loud", "old"), ("fills the room", "makes people dance", "tells a feeling"), "play it at parties"),
    "deserts": ("a desert", ("dry", "hot", "wide", "empty"), ("has little rain", "hides small animals", "shines at noon"), "cross them by camel"),
    "horses": ("a horse", ("strong", "fast", "gentle", "tall"), ("runs in a field", "eats hay", "pulls a cart"), "ride them on farms"),
    "boats": ("a boat", ("small", "white", "steady", "slow"), ("floats on water", "carries fishermen", "sails with the wind"), "take them on the lake"),
    "stars": ("a star", ("bright", "far", "hot", "tiny"), ("shines at night", "guides sailors", "twinkles in the sky"), "count them in summer"),
    "soup": ("soup", ("hot", "thick", "tasty", "simple"), ("warms the body", "cooks in a pot", "is eaten with bread"), "make it in winter"),
    "forests": ("a forest", ("dark", "green", "deep", "quiet"), ("shelters animals", "cleans the air", "grows for years"), "walk in them on holidays"),
    "frogs": ("a frog", ("green", "small", "wet", "noisy"), ("jumps into ponds", "catches flies", "sings at night"), "watch them by the pond"),
    "mountains": ("a mountain", ("high", "cold", "rocky", "grand"), ("touches the clouds", "holds snow", "stands for ages"), "climb them in summer"),
    "clocks": ("a clock", ("round", "exact", "old", "small"), ("tells the time", "ticks all day", "hangs on the wall"), "check them often"),
    "kites": ("a kite", ("light", "bright", "colorful", "thin"), ("flies in the wind", "pulls on a string", "dances in the sky"), "fly them at the beach"),
    "lemons": ("a lemon", ("sour", "yellow", "fresh", "juicy"), ("grows in warm places", "adds taste to tea", "makes a drink"), "squeeze them for juice"),
    "cities": ("a city", ("big", "busy", "bright", "noisy"), ("never sleeps", "has tall buildings", "joins many roads"), "live in them for work"),
    "farms": ("a farm", ("large", "quiet", "green", "busy"), ("grows wheat", "keeps cows", "feeds the town"), "visit them in spring"),
    "whales": ("a whale", ("huge", "gentle", "grey", "slow"), ("sings in the ocean", "breathes air", "swims very far"), "watch them from boats"),
    "candles": ("a candle", ("warm", "small", "bright", "slow"), ("burns with a flame", "lights a room", "melts over time"), "light them at dinner"),
    "bridges": ("a bridge", ("long", "strong", "old", "high"), ("crosses a river", "joins two roads", "carries cars"), "walk across them"),
    "rabbits": ("a rabbit", ("soft", "quick", "shy", "small"), ("digs a burrow", "eats carrots", "hops in the grass"), "keep them in gardens"),
    "the wind": ("the wind", ("strong", "cold", "fresh", "wild"), ("moves the clouds", "turns the mills", "shakes the trees"), "fly kites in it"),
    "maps": ("a map", ("flat", "clear", "useful", "old"), ("shows the roads", "marks the rivers", "helps travelers"), "read them on trips"),
    "songs": ("a song", ("short", "happy", "sweet", "catchy"), ("has a tune", "tells a story", "stays in the mind"), "sing them together"),
    "chess": ("chess", ("old", "quiet", "clever", "hard"), ("uses a board", "has many pieces", "trains the mind"), "play it in clubs"),
}

REQUESTS = (
    "Write two sentences about {topic}.",
    "Tell me about {topic} in two sentences.",
    "Describe {topic} briefly.",
    "What can you say about {topic}?",
    "Write a short note about {topic}.",
    "Say something about {topic}.",
    "Give me two facts about {topic}.",
    "Please write about {topic}.",
)

END_PHRASES = (
    "Is there anything else I can help with?",
    "Let me know if you have additional questions.",
    "That is all.",
    "Have a nice day.",
)

SYSTEM_PROMPTS = ("You are a helpful assistant.", "You are a careful assistant that follows instructions.")
