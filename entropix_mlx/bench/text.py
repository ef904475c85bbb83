"""The benchmark's prompt: plain English prose written for this project, cut to a token count.

Real, varied text (not a repeated token) so that the attention pattern, and with it the
Entropix attention metrics, look like those of a real prompt.
"""

from typing import List

from ..errors import BenchError

PARAGRAPHS = (
    "The lighthouse at the end of the harbour wall was built in the years when the town still "
    "lived from the sea. Its keeper climbed one hundred and twelve steps each evening to trim the "
    "wick, wind the clockwork that turned the lens, and write the weather into a book bound in "
    "oilcloth. The book survives in the town library. Most entries are a single line: wind from "
    "the west, a light swell, two boats in before dark. A few run to a page, and those are the "
    "nights people still talk about.",
    "Bread is one of the oldest things people make on purpose. Flour, water, salt and a little "
    "yeast become, after a day of patience, something that smells of the whole kitchen. The "
    "baker's real work is timing. Dough that rises too long turns sour and slack; dough that is "
    "rushed bakes into a dense brick. Good bakers learn to read the dough with their fingers, "
    "pressing it gently and watching how slowly the dent fills back in.",
    "Rivers do not flow in straight lines, even across flat ground. A small bend makes the water "
    "on the outside of the curve run faster, so it cuts into that bank while the slower water on "
    "the inside drops sand and gravel. Year after year the bend grows deeper and wider, until the "
    "river loops back on itself and, in a flood, breaks through the narrow neck of land. The old "
    "loop is left behind as a quiet, curved lake.",
    "Every autumn, millions of small birds leave the northern forests and fly south, many of them "
    "at night. They navigate by the stars, by the setting sun, by the magnetic field of the earth, "
    "and near the end of the journey by landmarks they remember from the year before. A warbler "
    "that weighs less than a letter may cross a sea in a single flight, burning almost all of the "
    "fat it stored in the weeks before it left.",
    "My grandmother kept a drawer of string. Short pieces, long pieces, garden twine, the red and "
    "white cord from the baker's boxes, all wound into small bundles and tied with a half hitch. "
    "When I asked why, she said that string is the one thing you never have when you need it. "
    "After she died we found the drawer still full, and for years every parcel in the family was "
    "tied with her string.",
    "A clock pendulum keeps time because the period of its swing depends almost only on its "
    "length. Whether it swings wide or narrow, a pendulum of a given length takes nearly the same "
    "time to go back and forth. Clockmakers used this to build clocks that lost less than a "
    "minute a week. The trouble was heat: a warm brass rod is a little longer than a cold one, so "
    "a summer afternoon slowed every clock in the town.",
    "The market opens before sunrise. Farmers arrive in vans with crates of leeks, potatoes still "
    "dusted with soil, and eggs in cardboard trays. The fish stall is set out on crushed ice, and "
    "the cheese seller cuts small wedges for anyone who lingers. By nine the best tomatoes are "
    "gone and the café on the corner has run out of croissants. By noon the square is swept clean "
    "and it is hard to believe that anything happened there at all.",
    "Learning a second language as an adult is mostly a matter of tolerating confusion. For "
    "months the new words refuse to stay in memory, and every conversation feels like walking on "
    "ice. Then, without any clear moment of change, a sentence comes out whole and correct before "
    "you have had time to build it. Teachers say the trick is to keep listening to things that "
    "are slightly too hard, and to keep speaking even when you are sure to make mistakes.",
    "Ice floats because water is strange. Most substances shrink as they cool and are densest as "
    "solids, but water is densest a few degrees above freezing, and ice is lighter still. That is "
    "why lakes freeze from the top down. The ice forms a lid that keeps the water beneath it from "
    "freezing solid, and fish spend the winter in the dark, cold water near the bottom, moving "
    "slowly and eating very little until spring.",
    "The old railway line was closed forty years ago and the rails were taken up soon after. What "
    "remains is a long, level path through cuttings and over embankments, with a stone bridge "
    "every mile or so. Cyclists use it now, and walkers with dogs. In spring the cuttings fill "
    "with primroses, and in places you can still find the iron posts that once carried the "
    "telegraph wires beside the track.",
    "A good map leaves most things out. A road map does not show the trees, a geological map does "
    "not show the roads, and a map of the underground railway bends every line to fit the page. "
    "The mapmaker's skill lies in choosing what to keep for the reader's purpose. A map that "
    "tried to show everything would be as large as the land itself, and just as hard to find "
    "your way across.",
    "Bees tell each other where to find flowers by dancing. A forager that returns to the hive "
    "with nectar walks in a figure of eight across the comb, waggling her body along the middle "
    "line. The angle of that line, measured from straight up, gives the direction of the flowers "
    "relative to the sun. The length of the waggle run tells the distance. Other bees follow her "
    "closely, then leave the hive and fly straight to the spot.",
    "The first winter in the new house we learned how the wind moved. It came under the back door "
    "in a thin, steady stream, rattled the sash windows on the stairs, and sang in the chimney of "
    "the room we never used. We hung heavy curtains, stuffed a rolled towel against the door, and "
    "wrote the date on the wall each time we lit the stove. By March the list of dates reached "
    "the height of my shoulder.",
    "Compound interest is simple to state and hard to feel. Money that earns five percent a year "
    "doubles in about fourteen years, and doubles again in the next fourteen. Over a working "
    "life the later doublings dwarf the early ones, so a small sum saved at twenty can be worth "
    "more at sixty than a larger sum saved at forty. The same arithmetic works against people who "
    "borrow, which is why debts that seem small can grow so quickly.",
    "On a clear night far from any town, the sky holds about two thousand stars that the eye can "
    "see at once. The band of the Milky Way is the light of many more, too faint and too close "
    "together to tell apart. Ancient sailors and farmers knew the sky as well as their own fields. "
    "They timed the planting of crops by the first rising of certain stars before dawn, and steered "
    "their ships by the ones that never set.",
    "Repairing a bicycle teaches patience. A slow puncture has to be found by pumping up the tube "
    "and listening, or by passing it through a bowl of water and watching for the thin line of "
    "bubbles. A chain that slips needs the gears adjusted a quarter turn at a time. Most problems "
    "turn out to be small and mechanical, and there is a quiet pleasure in a machine simple "
    "enough that every part can be seen and understood.",
    "The library was once a corn exchange, and you can still see the old trading floor under the "
    "reading room. Farmers used to bring samples of grain in small cloth bags and pour them into "
    "their palms for the merchants to inspect. Prices were chalked on a board by the door. Today "
    "the board lists the opening hours and the dates of the next book sale, and children sit on "
    "cushions where the grain once changed hands.",
    "Tea reached Europe as a rare and costly medicine and became, within two centuries, an "
    "ordinary drink for ordinary people. Ships raced each other from China to London to bring the "
    "new season's leaves to market first, and the fastest of them were among the most beautiful "
    "sailing ships ever built. When the canal opened and steamships took over the route, the "
    "great clippers were sold off to carry wool and timber instead.",
    "When a city plants trees along its streets, the benefits go beyond shade. Trees cool the air "
    "on hot days, slow the rain so that drains do not overflow, and give birds somewhere to nest. "
    "People walk more on shaded streets and, some studies suggest, drive a little more slowly. The "
    "hard part is the first ten years, when young trees need water through every dry summer and "
    "protection from cars, bicycles and vandals.",
    "The orchestra tunes to a single note played by the oboe. The oboe is chosen because its sound "
    "is clear and carries well, and because its pitch is hard to change once the reed is set. One "
    "by one the other instruments match it, first the woodwinds, then the brass, then the strings. "
    "For a few seconds the hall is full of a slowly settling hum, and then the conductor raises a "
    "hand and the room goes quiet.",
    "Snow is mostly air. A fresh fall can be nine parts air to one part ice, which is why it muffles "
    "sound so well and why a deep drift can keep a buried animal warm. As the days pass the "
    "crystals lose their points, pack together and grow heavy. Mountain guides dig pits to read "
    "the layers of a winter's snow the way a geologist reads rock, looking for a weak layer that "
    "could let the slope above give way.",
    "The ferry crosses the estuary eleven times a day in summer and seven in winter. It carries "
    "cars, bicycles, a few lorries and, on market days, a crowd of people with baskets. The crossing "
    "takes twenty minutes, long enough to buy a cup of tea and watch the gulls follow the wake. "
    "Plans for a bridge have been drawn up three times in the last fifty years, and each time the "
    "town has argued until the money was spent on something else.",
    "Paper is made by beating plant fibres in water until they separate, then catching them on a "
    "fine screen so that they lie in a thin, even mat. As the water drains, the fibres tangle and "
    "bond. The sheet is pressed, dried and sometimes coated to make it smooth. A hand papermaker "
    "can feel the thickness of a sheet by the weight of the wet mould, and a good one turns out "
    "hundreds of nearly identical sheets in a day.",
    "Most of what we call memory is reconstruction. When we recall an afternoon from childhood, we "
    "do not replay a recording; we rebuild the scene from fragments and fill the gaps with what "
    "seems likely. That is why two people can remember the same event so differently, and why a "
    "memory can change a little each time it is told. It is also why old photographs can surprise "
    "us with details we were certain we knew.",
    "The allotments sit on a slope above the railway. Each plot is ten paces wide and thirty long, "
    "and each tells you something about the person who keeps it. One has straight rows of onions "
    "and a shed painted green; another is a tangle of raspberry canes, sunflowers and a bathtub "
    "full of rainwater. On summer evenings the gardeners lean on their spades and trade advice, "
    "seedlings and complaints about the slugs.",
    "A well-made wooden chair can last for three hundred years. The joints are cut so that the "
    "parts lock together and tighten as the wood dries, and the legs are splayed a little so that "
    "the chair stands firm on an uneven floor. Country chairmakers worked green wood fresh from the "
    "tree with simple tools: an axe, a drawknife and a pole lathe driven by a foot treadle and a "
    "springy branch overhead.",
    "Fog forms when air near the ground cools until it can no longer hold its water as vapour. On "
    "still autumn nights the ground loses heat to a clear sky, the air just above it cools, and by "
    "morning the valleys are full of white. From the hilltops the fog looks like a lake, with "
    "church towers and treetops standing out of it like islands. As the sun climbs, the lake "
    "thins, breaks into drifting rags and is gone by mid-morning.",
    "The school held its sports day on the last Friday of June. There were races for every age, "
    "an egg and spoon race that the teachers took more seriously than the children, and a tug of "
    "war between the parents that ended, every year, with everyone in a heap on the grass. The "
    "results were written on a board and forgotten within a week, but the photographs were kept "
    "for decades in albums and biscuit tins.",
)

TEXT = "\n\n".join(PARAGRAPHS)


def benchmark_prompt(tokenizer, length: int) -> List[int]:
    """The first `length` token ids of the benchmark text (raw text, no chat template)."""
    ids = list(tokenizer.encode(TEXT))
    if length > len(ids):
        raise BenchError(
            f"prompt length {length} is longer than the benchmark text ({len(ids)} tokens "
            "with this tokenizer); choose --prompt-lengths up to that"
        )
    return ids[:length]
