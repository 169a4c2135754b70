"""Text material for the synthetic speech bank: all public domain or written for this project.

* :data:`HARVARD_SENTENCES` -- lists 1-16 of the IEEE (1969) "Harvard" phonetically balanced sentences
  (IEEE Recommended Practice for Speech Quality Measurements, IEEE Trans. Audio and Electroacoustics 17(3),
  1969), public domain. The text follows the widely reproduced transcription of the lists. Where transcriptions
  differ we kept the common reading: list 1 no. 10 "A large size in stockings is hard to sell." (some give "Large
  size ..."), list 10 no. 6 without a comma after "boat"; OCR slips of one transcription ("Mesh mire", "The bill
  as paid", "with s smoky taste") are not copied. Lists 17 onwards are left out rather than risk misquoting them.
* :data:`SEMANTIC_CATEGORIES` and :data:`CARRIER_SENTENCES` (ours) -- common one- and two-syllable nouns in eight
  categories, spoken in neutral carrier sentences that predict none of them, so that the category word is the only
  thing that varies (:func:`semantic_items`).
* :data:`CONTEXT_BIAS_ITEMS` (ours) -- sentences whose context strongly predicts one word while a different,
  similar-sounding real word is spoken (:func:`context_bias_items`).
* :data:`OTHER_LANGUAGE_SENTENCES` (ours) -- everyday sentences in eight languages other than English, for speech an
  English-only model cannot transcribe (:func:`other_language_sentences`).
"""
from __future__ import annotations

import pandas as pd

__all__ = [
    "CARRIER_SENTENCES",
    "CONTEXT_BIAS_ITEMS",
    "HARVARD_LIST_SIZE",
    "HARVARD_SENTENCES",
    "OTHER_LANGUAGE_SENTENCES",
    "SEMANTIC_CATEGORIES",
    "context_bias_items",
    "harvard_sentences",
    "other_language_sentences",
    "semantic_items",
]

HARVARD_LIST_SIZE = 10

HARVARD_SENTENCES: tuple[str, ...] = (
    # List 1
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    # List 2
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.",
    "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.",
    "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.",
    "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.",
    "The girl at the booth sold fifty bonds.",
    # List 3
    "The small pup gnawed a hole in the sock.",
    "The fish twisted and turned on the bent hook.",
    "Press the pants and sew a button on the vest.",
    "The swan dive was far short of perfect.",
    "The beauty of the view stunned the young boy.",
    "Two blue fish swam in the tank.",
    "Her purse was full of useless trash.",
    "The colt reared and threw the tall rider.",
    "It snowed, rained, and hailed the same morning.",
    "Read verse out loud for pleasure.",
    # List 4
    "Hoist the load to your left shoulder.",
    "Take the winding path to reach the lake.",
    "Note closely the size of the gas tank.",
    "Wipe the grease off his dirty face.",
    "Mend the coat before you go out.",
    "The wrist was badly strained and hung limp.",
    "The stray cat gave birth to kittens.",
    "The young girl gave no clear response.",
    "The meal was cooked before the bell rang.",
    "What joy there is in living.",
    # List 5
    "A king ruled the state in the early days.",
    "The ship was torn apart on the sharp reef.",
    "Sickness kept him home the third week.",
    "The wide road shimmered in the hot sun.",
    "The lazy cow lay in the cool grass.",
    "Lift the square stone over the fence.",
    "The rope will bind the seven books at once.",
    "Hop over the fence and plunge in.",
    "The friendly gang left the drug store.",
    "Mesh wire keeps chicks inside.",
    # List 6
    "The frosty air passed through the coat.",
    "The crooked maze failed to fool the mouse.",
    "Adding fast leads to wrong sums.",
    "The show was a flop from the very start.",
    "A saw is a tool used for making boards.",
    "The wagon moved on well oiled wheels.",
    "March the soldiers past the next hill.",
    "A cup of sugar makes sweet fudge.",
    "Place a rosebush near the porch steps.",
    "Both lost their lives in the raging storm.",
    # List 7
    "We talked of the side show in the circus.",
    "Use a pencil to write the first draft.",
    "He ran half way to the hardware store.",
    "The clock struck to mark the third period.",
    "A small creek cut across the field.",
    "Cars and busses stalled in snow drifts.",
    "The set of china hit the floor with a crash.",
    "This is a grand season for hikes on the road.",
    "The dune rose from the edge of the water.",
    "Those words were the cue for the actor to leave.",
    # List 8
    "A yacht slid around the point into the bay.",
    "The two met while playing on the sand.",
    "The ink stain dried on the finished page.",
    "The walled town was seized without a fight.",
    "The lease ran out in sixteen weeks.",
    "A tame squirrel makes a nice pet.",
    "The horn of the car woke the sleeping cop.",
    "The heart beat strongly and with firm strokes.",
    "The pearl was worn in a thin silver ring.",
    "The fruit peel was cut in thick slices.",
    # List 9
    "The Navy attacked the big task force.",
    "See the cat glaring at the scared mouse.",
    "There are more than two factors here.",
    "The hat brim was wide and too droopy.",
    "The lawyer tried to lose his case.",
    "The grass curled around the fence post.",
    "Cut the pie into large parts.",
    "Men strive but seldom get rich.",
    "Always close the barn door tight.",
    "He lay prone and hardly moved a limb.",
    # List 10
    "The slush lay deep along the street.",
    "A wisp of cloud hung in the blue air.",
    "A pound of sugar costs more than eggs.",
    "The fin was sharp and cut the clear water.",
    "The play seems dull and quite stupid.",
    "Bail the boat to stop it from sinking.",
    "The term ended in late June that year.",
    "A tusk is used to make costly gifts.",
    "Ten pins were set in order.",
    "The bill was paid every third week.",
    # List 11
    "Oak is strong and also gives shade.",
    "Cats and dogs each hate the other.",
    "The pipe began to rust while new.",
    "Open the crate but don't break the glass.",
    "Add the sum to the product of these three.",
    "Thieves who rob friends deserve jail.",
    "The ripe taste of cheese improves with age.",
    "Act on these orders with great speed.",
    "The hog crawled under the high fence.",
    "Move the vat over the hot fire.",
    # List 12
    "The bark of the pine tree was shiny and dark.",
    "Leaves turn brown and yellow in the fall.",
    "The pennant waved when the wind blew.",
    "Split the log with a quick, sharp blow.",
    "Burn peat after the logs give out.",
    "He ordered peach pie with ice cream.",
    "Weave the carpet on the right hand side.",
    "Hemp is a weed found in parts of the tropics.",
    "A lame back kept his score low.",
    "We find joy in the simplest things.",
    # List 13
    "Type out three lists of orders.",
    "The harder he tried the less he got done.",
    "The boss ran the show with a watchful eye.",
    "The cup cracked and spilled its contents.",
    "Paste can cleanse the most dirty brass.",
    "The slang word for raw whiskey is booze.",
    "It caught its hind paw in a rusty trap.",
    "The wharf could be seen at the farther shore.",
    "Feel the heat of the weak dying flame.",
    "The tiny girl took off her hat.",
    # List 14
    "A cramp is no small danger on a swim.",
    "He said the same phrase thirty times.",
    "Pluck the bright rose without leaves.",
    "Two plus seven is less than ten.",
    "The glow deepened in the eyes of the sweet girl.",
    "Bring your problems to the wise chief.",
    "Write a fond note to the friend you cherish.",
    "Clothes and lodging are free to new men.",
    "We frown when events take a bad turn.",
    "Port is a strong wine with a smoky taste.",
    # List 15
    "The young kid jumped the rusty gate.",
    "Guess the results from the first scores.",
    "A salt pickle tastes fine with ham.",
    "The just claim got the right verdict.",
    "These thistles bend in a high wind.",
    "Pure bred poodles have curls.",
    "The tree top waved in a graceful way.",
    "The spot on the blotter was made by green ink.",
    "Mud was spattered on the front of his white shirt.",
    "The cigar burned a hole in the desk top.",
    # List 16
    "The empty flask stood on the tin tray.",
    "A speedy man can beat this track mark.",
    "He broke a new shoelace that day.",
    "The coffee stand is too high for the couch.",
    "The urge to write short stories is rare.",
    "The pencils have all been used.",
    "The pirates seized the crew of the lost ship.",
    "We tried to replace the coin but failed.",
    "She sewed the torn coat quite neatly.",
    "The sofa cushion is red and of light weight.",
)
"""Harvard lists 1-16 in order (list k is ``HARVARD_SENTENCES[10 * (k - 1): 10 * k]``)."""


def harvard_sentences(n: int | None = None, *, lists: range | list[int] | None = None) -> list[str]:
    """The first ``n`` Harvard sentences (all when None), or those of the given list numbers (1-based)."""
    if lists is not None:
        n_lists = len(HARVARD_SENTENCES) // HARVARD_LIST_SIZE
        out = []
        for k in lists:
            if not 1 <= k <= n_lists:
                raise ValueError(f"Harvard list {k} is not included (lists 1-{n_lists})")
            out += HARVARD_SENTENCES[HARVARD_LIST_SIZE * (k - 1): HARVARD_LIST_SIZE * k]
        return out[:n] if n is not None else out
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return list(HARVARD_SENTENCES[:n] if n is not None else HARVARD_SENTENCES)


# ----------------------------------------------------------------------------------------------------------------
# Semantic categories in neutral carriers
# ----------------------------------------------------------------------------------------------------------------
SEMANTIC_CATEGORIES: dict[str, list[str]] = {
    "fruit": ["apple", "grape", "lemon", "peach", "cherry", "mango", "melon", "plum"],
    "clothing": ["shirt", "coat", "scarf", "jacket", "sock", "glove", "skirt", "sweater"],
    "animals": ["horse", "tiger", "rabbit", "sheep", "monkey", "camel", "zebra", "goat"],
    "vehicles": ["truck", "bus", "train", "car", "taxi", "tractor", "van", "scooter"],
    "tools": ["hammer", "wrench", "drill", "shovel", "chisel", "rake", "pliers", "axe"],
    "body parts": ["elbow", "knee", "shoulder", "ankle", "finger", "thumb", "chin", "wrist"],
    "furniture": ["table", "chair", "sofa", "desk", "shelf", "bed", "stool", "bench"],
    "instruments": ["drum", "guitar", "flute", "trumpet", "harp", "cello", "banjo", "tuba"],
}
"""Eight categories x eight common nouns (one or two syllables, no word in two categories, no homophone of a
word of another category, colours and fruit names like "orange" avoided)."""

CARRIER_SENTENCES: tuple[str, ...] = (
    "The next word is {word}.",
    "Please say {word} again.",
    "I wrote {word} on the card.",
    "Now repeat the word {word}.",
    "She said {word} twice.",
    "The answer was {word}.",
    "He read {word} from the list.",
    "Write down {word} for me.",
    "You will hear {word} next.",
    "The last item was {word}.",
    "Say {word} once more.",
    "Can you spell {word} for us?",
)
"""Twelve neutral carriers with a ``{word}`` slot; none suggests any category (all talk about words or saying)."""


def semantic_items(n_carriers: int | None = None) -> pd.DataFrame:
    """Every category word in every carrier (the first ``n_carriers`` carriers; all when None).

    Columns: ``text, word, category, carrier_id`` (carrier-major order: all words in carrier 0, then carrier 1 ...).
    """
    carriers = CARRIER_SENTENCES if n_carriers is None else CARRIER_SENTENCES[:n_carriers]
    if n_carriers is not None and not 1 <= n_carriers <= len(CARRIER_SENTENCES):
        raise ValueError(f"n_carriers must be in 1..{len(CARRIER_SENTENCES)}, got {n_carriers}")
    rows = [
        {"text": c.format(word=w), "word": w, "category": cat, "carrier_id": i}
        for i, c in enumerate(carriers)
        for cat, words in SEMANTIC_CATEGORIES.items()
        for w in words
    ]
    return pd.DataFrame(rows, columns=["text", "word", "category", "carrier_id"])


# ----------------------------------------------------------------------------------------------------------------
# Context bias: the context predicts one word, a similar-sounding one is spoken
# ----------------------------------------------------------------------------------------------------------------
CONTEXT_BIAS_ITEMS: tuple[dict[str, str], ...] = tuple(
    {"carrier": c, "expected_word": e, "spoken_word": s}
    for c, e, s in (
        ("She spread butter on her {word}.", "bread", "braid"),
        ("He unlocked the front door with his {word}.", "key", "tea"),
        ("He drinks a cup of {word} every morning.", "coffee", "toffee"),
        ("Please pass the salt and {word}.", "pepper", "paper"),
        ("The bird flew back to its {word}.", "nest", "vest"),
        ("She brushed her teeth and combed her {word}.", "hair", "bear"),
        ("At night the sky was full of bright {word}.", "stars", "scars"),
        ("The dog wagged its {word} happily.", "tail", "pail"),
        ("He wore a warm wool {word} in the winter.", "coat", "goat"),
        ("The teacher wrote on the board with a piece of {word}.", "chalk", "cork"),
        ("She paid for the groceries with her credit {word}.", "card", "cart"),
        ("The fisherman caught a big {word}.", "fish", "dish"),
        ("The king sat on his golden {word}.", "throne", "phone"),
        ("Please lock the {word} when you leave.", "door", "floor"),
        ("The children built a castle in the {word}.", "sand", "hand"),
        ("He hit the nail with a {word}.", "hammer", "hammock"),
        ("The cat chased the {word} under the bed.", "mouse", "moose"),
        ("She wiped the rain off her {word}.", "face", "vase"),
        ("They rowed the {word} across the lake.", "boat", "note"),
        ("He mailed the letter without a {word}.", "stamp", "lamp"),
        ("She poured the cold milk into a {word}.", "glass", "grass"),
        ("The baby drank warm milk from a {word}.", "bottle", "battle"),
        ("She sliced the bread with a sharp {word}.", "knife", "wife"),
        ("Every morning the farmer milked the {word}.", "cow", "bow"),
        ("She blew out the {word} on her birthday cake.", "candle", "handle"),
        ("The bees made sweet golden {word}.", "honey", "money"),
        ("He wrote his name in {word} on the test.", "pencil", "stencil"),
        ("The children swam all afternoon in the {word}.", "pool", "fool"),
        ("The cowboy rode his {word} across the plains.", "horse", "house"),
        ("He planted tomato seeds in the {word}.", "garden", "pardon"),
        ("The mouse nibbled a piece of {word}.", "cheese", "keys"),
        ("The train pulled slowly into the {word}.", "station", "nation"),
        ("They ate lunch at twelve o'clock {word}.", "noon", "moon"),
        ("She hung the painting on the {word}.", "wall", "ball"),
        ("Rain fell from the dark grey {word}.", "clouds", "crowds"),
        ("She wore a gold ring on her {word}.", "finger", "singer"),
    )
)
"""Thirty-six items ``{carrier, expected_word, spoken_word}``: ``carrier.format(word=expected_word)`` is what the context
predicts, ``carrier.format(word=spoken_word)`` is what is said (a real word one or two sounds away)."""


def context_bias_items() -> pd.DataFrame:
    """:data:`CONTEXT_BIAS_ITEMS` as a DataFrame with ``item_id, carrier, expected_word, spoken_word,
    expected_text, spoken_text``."""
    df = pd.DataFrame(list(CONTEXT_BIAS_ITEMS))
    df.insert(0, "item_id", range(len(df)))
    df["expected_text"] = [c.format(word=w) for c, w in zip(df["carrier"], df["expected_word"])]
    df["spoken_text"] = [c.format(word=w) for c, w in zip(df["carrier"], df["spoken_word"])]
    return df


OTHER_LANGUAGE_SENTENCES: dict[str, tuple[str, ...]] = {
    "de": ("Der Hund läuft schnell über die grüne Wiese und bellt laut.",
           "Morgen fahren wir mit dem Zug nach Berlin, um meine Großmutter zu besuchen.",
           "Es regnet seit drei Tagen ohne Pause in der ganzen Stadt.",
           "Im Sommer essen die Kinder gern Erdbeeren mit Sahne im Garten.",
           "Der Bäcker öffnet seinen Laden jeden Morgen um sechs Uhr.",
           "Wir haben gestern Abend lange über das neue Buch gesprochen."),
    "es": ("El perro corre rápido por el campo verde y ladra fuerte.",
           "Mañana vamos en tren a Madrid para visitar a mi abuela.",
           "Llueve desde hace tres días sin parar en toda la ciudad.",
           "En verano los niños comen fresas con nata en el jardín.",
           "El panadero abre su tienda cada mañana a las seis.",
           "Ayer por la noche hablamos mucho tiempo sobre el libro nuevo."),
    "fr-fr": ("Le chien court vite dans le pré vert et aboie fort.",
              "Demain nous prenons le train pour Paris afin de voir ma grand-mère.",
              "Il pleut depuis trois jours sans arrêt dans toute la ville.",
              "En été les enfants mangent des fraises à la crème dans le jardin.",
              "Le boulanger ouvre sa boutique chaque matin à six heures.",
              "Hier soir nous avons longtemps parlé du nouveau livre."),
    "it": ("Il cane corre veloce nel prato verde e abbaia forte.",
           "Domani prendiamo il treno per Roma per visitare mia nonna.",
           "Piove da tre giorni senza sosta in tutta la città.",
           "D'estate i bambini mangiano le fragole con la panna in giardino.",
           "Il fornaio apre il suo negozio ogni mattina alle sei.",
           "Ieri sera abbiamo parlato a lungo del nuovo libro."),
    "nl": ("De hond rent snel over het groene gras en blaft hard.",
           "Morgen nemen we de trein naar Amsterdam om oma te bezoeken.",
           "Het regent al drie dagen zonder pauze in de hele stad.",
           "In de zomer eten de kinderen aardbeien met slagroom in de tuin.",
           "De bakker opent zijn winkel elke ochtend om zes uur.",
           "Gisteravond hebben we lang over het nieuwe boek gepraat."),
    "pl": ("Pies biegnie szybko przez zieloną łąkę i głośno szczeka.",
           "Jutro jedziemy pociągiem do Warszawy, aby odwiedzić babcię.",
           "Pada od trzech dni bez przerwy w całym mieście.",
           "Latem dzieci jedzą truskawki ze śmietaną w ogrodzie.",
           "Piekarz otwiera swój sklep każdego ranka o szóstej.",
           "Wczoraj wieczorem długo rozmawialiśmy o nowej książce."),
    "pt": ("O cão corre depressa pelo campo verde e ladra alto.",
           "Amanhã vamos de comboio a Lisboa para visitar a minha avó.",
           "Chove há três dias sem parar em toda a cidade.",
           "No verão as crianças comem morangos com natas no jardim.",
           "O padeiro abre a sua loja todas as manhãs às seis horas.",
           "Ontem à noite falámos muito tempo sobre o livro novo."),
    "sv": ("Hunden springer snabbt över den gröna ängen och skäller högt.",
           "I morgon tar vi tåget till Stockholm för att hälsa på mormor.",
           "Det har regnat i tre dagar utan uppehåll i hela staden.",
           "På sommaren äter barnen jordgubbar med grädde i trädgården.",
           "Bagaren öppnar sin butik varje morgon klockan sex.",
           "I går kväll pratade vi länge om den nya boken."),
}
"""Six sentences in each of eight languages (espeak-ng's language codes: German, Spanish, French, Italian, Dutch,
Polish, Portuguese, Swedish), the same six everyday situations in every language."""


def other_language_sentences(n_per_language: int | None = None) -> pd.DataFrame:
    """:data:`OTHER_LANGUAGE_SENTENCES` as a DataFrame with ``language, text`` (the first ``n_per_language`` of each
    language; all by default)."""
    return pd.DataFrame([{"language": lang, "text": text} for lang, sentences in OTHER_LANGUAGE_SENTENCES.items()
                         for text in sentences[:n_per_language]])
