"""What the evaluation zoo holds: its labels, the real classes behind them, and every model.

A class is one source of real images ("fashion_mnist:sneaker", "openclipart:animals/birds");
a model is trained on, or samples from, one class or several (mixed models carry each class's
label, so that relevance is graded). The build (`modelseek.zoo.build`) reads these tables only.
"""

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

SOURCE_LINKS = {
    "fashion_mnist": "https://github.com/zalandoresearch/fashion-mnist",
    "mnist": "https://yann.lecun.com/exdb/mnist/",
    "openclipart": "https://openclipart.org/",
    "tuxpaint": "https://tuxpaint.org/",
    "emoji": "https://github.com/googlefonts/noto-emoji",
    "lfw": "http://vis-www.cs.umass.edu/lfw/",
    "face_gan": "https://pypi.org/project/gan-face-generate/",
}
SOURCE_LICENSES = {
    "fashion_mnist": "MIT",
    "mnist": "CC-BY-SA-3.0",
    "openclipart": "CC0-1.0 (Open Clip Art Library)",
    "tuxpaint": "GPL-2.0-or-later (Tux Paint stamps)",
    "emoji": "OFL-1.1 (Noto Color Emoji)",
    "lfw": "research use (LFW)",
    "face_gan": "MIT",
}


@dataclass(frozen=True)
class LabelSpec:
    """A label of the zoo.

    Attributes:
        noun: a short English noun phrase for prompts ("a sneaker", "the digit three").
        plural: what a model of only this label generates ("sneakers"), for names.
    """

    noun: str
    plural: str


@dataclass(frozen=True)
class ModelSpec:
    """One model of the zoo.

    Attributes:
        id: the catalog id.
        kind: "dcgan", "vae", "sample_set" or "pretrained_gan".
        classes: the real classes it is trained on or samples ("source:class").
        name: the catalog title.
        description: a human-style description, 1-3 sentences.
        tags: catalog tags besides its labels.
        small: whether the small (CI) zoo holds it too.
    """

    id: str
    kind: str
    classes: tuple[str, ...]
    name: str
    description: str
    tags: tuple[str, ...] = ()
    small: bool = False

    @property
    def source(self) -> str:
        """The data source of its classes ("fashion_mnist", "openclipart", ...)."""
        return self.classes[0].split(":", 1)[0]


LABELS: dict[str, LabelSpec] = {
    "t-shirt": LabelSpec("a t-shirt", "T-shirts"),
    "trousers": LabelSpec("a pair of trousers", "trousers"),
    "pullover": LabelSpec("a pullover", "pullovers"),
    "dress": LabelSpec("a dress", "dresses"),
    "coat": LabelSpec("a coat", "coats"),
    "sandal": LabelSpec("a sandal", "sandals"),
    "shirt": LabelSpec("a shirt", "shirts"),
    "sneaker": LabelSpec("a sneaker", "sneakers"),
    "bag": LabelSpec("a bag", "bags"),
    "ankle-boot": LabelSpec("an ankle boot", "ankle boots"),
    **{
        f"digit-{digit}": LabelSpec(f"the digit {word}", f"handwritten {word}s")
        for digit, word in enumerate(
            ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
        )
    },
    "mammal": LabelSpec("a mammal", "mammals"),
    "bird": LabelSpec("a bird", "birds"),
    "fish": LabelSpec("a fish", "fish"),
    "insect": LabelSpec("an insect", "insects and bugs"),
    "dinosaur": LabelSpec("a dinosaur", "dinosaurs"),
    "fruit": LabelSpec("a fruit", "fruit"),
    "drink": LabelSpec("a drink", "drinks"),
    "dessert": LabelSpec("a dessert", "desserts"),
    "vehicle": LabelSpec("a car or other vehicle", "vehicles"),
    "boat": LabelSpec("a boat", "boats"),
    "flower": LabelSpec("a flower", "flowers"),
    "tree": LabelSpec("a tree", "trees"),
    "house": LabelSpec("a house", "houses"),
    "clothing": LabelSpec("a piece of clothing", "clothes and accessories"),
    "music": LabelSpec("a musical instrument", "musical instruments and records"),
    "weather": LabelSpec("a weather symbol", "weather symbols"),
    "smiley": LabelSpec("a smiley face", "smiley faces"),
    "face": LabelSpec("a human face", "faces"),
}

# Each real class and the label it carries.
CLASS_LABELS: dict[str, str] = {
    "fashion_mnist:t-shirt": "t-shirt",
    "fashion_mnist:pair of trousers": "trousers",
    "fashion_mnist:pullover": "pullover",
    "fashion_mnist:dress": "dress",
    "fashion_mnist:coat": "coat",
    "fashion_mnist:sandal": "sandal",
    "fashion_mnist:shirt": "shirt",
    "fashion_mnist:sneaker": "sneaker",
    "fashion_mnist:bag": "bag",
    "fashion_mnist:ankle boot": "ankle-boot",
    **{f"mnist:{digit}": f"digit-{digit}" for digit in range(10)},
    "openclipart:animals/mammals": "mammal",
    "openclipart:animals/birds": "bird",
    "openclipart:animals/fish": "fish",
    "openclipart:animals/bugs": "insect",
    "openclipart:animals/dinosaurs": "dinosaur",
    "openclipart:food/fruit": "fruit",
    "openclipart:food/beverages": "drink",
    "openclipart:food/desserts": "dessert",
    "openclipart:transportation/vehicles": "vehicle",
    "openclipart:transportation/boating": "boat",
    "openclipart:plants/flowers": "flower",
    "openclipart:plants/trees": "tree",
    "openclipart:buildings/homes": "house",
    "openclipart:people/clothing": "clothing",
    "openclipart:recreation/music": "music",
    "openclipart:signs_and_symbols/weather": "weather",
    "openclipart:people/smilies": "smiley",
    "tuxpaint:animals/mammals": "mammal",
    "tuxpaint:animals/birds": "bird",
    "tuxpaint:food/fruit": "fruit",
    "tuxpaint:town/houses": "house",
    "emoji:smileys": "smiley",
    "lfw:faces": "face",
    "face_gan:faces": "face",
}

FASHION_LOOKS = {
    "t-shirt": "short-sleeved T-shirts and tops laid flat, seen from the front",
    "pair of trousers": "pairs of trousers and jeans, two long legs side by side",
    "pullover": "long-sleeved pullovers and sweaters with the arms spread out",
    "dress": "dresses, long and narrow, some with straps, some with sleeves",
    "coat": "coats and jackets with long sleeves, many with a zip or buttons down the front",
    "sandal": "sandals and open summer shoes seen from the side, mostly straps and a sole",
    "shirt": "shirts and blouses with collars, some buttoned, some checked",
    "sneaker": "sneakers and trainers seen from the side, low and flat",
    "bag": "handbags, totes and satchels with handles, seen from the front",
    "ankle boot": "ankle boots seen from the side, with a heel and a high shaft",
}
DIGIT_LOOKS = {
    0: "an oval loop",
    1: "a single upright or slanted stroke, sometimes with a small flag",
    2: "a curve on top and a flat base stroke",
    3: "two bumps stacked on the right, open on the left",
    4: "an open or closed triangle crossed by a vertical stroke",
    5: "a flat top, a short down stroke and a round belly",
    6: "a long curve down into a closed loop at the bottom",
    7: "a top bar and a long diagonal stroke, sometimes crossed",
    8: "two loops stacked on each other",
    9: "a loop on top of a straight or curved tail",
}


def _fashion_model(name: str, label: str, kind: str = "dcgan", small: bool = False) -> ModelSpec:
    plural = LABELS[label].plural
    what = {
        "dcgan": ("A small DCGAN", "DCGAN", "gan", ""),
        "vae": ("A small convolutional VAE", "VAE", "vae", ", a little blurry as VAE samples are"),
    }
    article, short, tag, blur = what[kind]
    return ModelSpec(
        id=f"fmnist-{label}-{kind}",
        kind=kind,
        classes=(f"fashion_mnist:{name}",),
        name=f"{plural[0].upper()}{plural[1:]} ({short}, Fashion-MNIST)",
        description=(
            f"{article} that generates 28x28 grayscale product photos, white on black: "
            f"{FASHION_LOOKS[name]}{blur}. Trained on the CPU on Fashion-MNIST's {name} images."
        ),
        tags=("fashion", "fashion-mnist", "grayscale", tag),
        small=small,
    )


def _digit_vae(digit: int, small: bool = False) -> ModelSpec:
    word = LABELS[f"digit-{digit}"].noun.removeprefix("the digit ")
    return ModelSpec(
        id=f"mnist-{digit}-vae",
        kind="vae",
        classes=(f"mnist:{digit}",),
        name=f"Handwritten {word}s (VAE, MNIST)",
        description=(
            f"A small convolutional VAE that draws the handwritten digit {word}, white ink on "
            f"black at 28x28: {DIGIT_LOOKS[digit]}, a little blurry as VAE samples are. "
            f"Trained on 400 MNIST images of the digit {digit}."
        ),
        tags=("digit", str(digit), "handwriting", "mnist", "grayscale", "vae"),
        small=small,
    )


def _sample_set(
    model_id: str, category: str, name: str, description: str, small: bool = False
) -> ModelSpec:
    source = category.split(":", 1)[0]
    return ModelSpec(
        id=model_id,
        kind="sample_set",
        classes=(category,),
        name=name,
        description=description,
        tags=(source.replace("_", "-"), "sample-set"),
        small=small,
    )


MODELS: tuple[ModelSpec, ...] = (
    *(
        _fashion_model(
            name,
            CLASS_LABELS[f"fashion_mnist:{name}"],
            # Sandals are thin straps: the DCGAN drew speckles, the VAE recognisable sandals.
            kind="vae" if name == "sandal" else "dcgan",
            small=name == "sneaker",
        )
        for name in FASHION_LOOKS
    ),
    *(_digit_vae(digit, small=digit == 7) for digit in range(10)),
    ModelSpec(
        id="fmnist-tops-dcgan",
        kind="dcgan",
        classes=("fashion_mnist:t-shirt", "fashion_mnist:shirt", "fashion_mnist:pullover"),
        name="Tops: T-shirts, shirts and pullovers (DCGAN, Fashion-MNIST)",
        description=(
            "A small DCGAN for upper-body clothing: T-shirts, shirts and pullovers as 28x28 "
            "grayscale product photos on black, short and long sleeves. Trained on a mix of "
            "three Fashion-MNIST classes."
        ),
        tags=("fashion", "fashion-mnist", "grayscale", "gan", "mixed"),
    ),
    ModelSpec(
        id="fmnist-footwear-vae",
        kind="vae",
        classes=("fashion_mnist:sandal", "fashion_mnist:sneaker", "fashion_mnist:ankle boot"),
        name="Footwear: sandals, sneakers and ankle boots (VAE, Fashion-MNIST)",
        description=(
            "A small VAE that generates shoes seen from the side, 28x28 grayscale on black: "
            "strappy sandals, flat sneakers and heeled ankle boots, somewhat blurry. Trained on "
            "a mix of three Fashion-MNIST classes."
        ),
        tags=("fashion", "fashion-mnist", "grayscale", "vae", "mixed", "shoes"),
    ),
    ModelSpec(
        id="mnist-1-7-vae",
        kind="vae",
        classes=("mnist:1", "mnist:7"),
        name="Handwritten ones and sevens (VAE, MNIST)",
        description=(
            "A small VAE that draws handwritten ones and sevens, white on black at 28x28: "
            "single strokes and strokes with a top bar. Trained on MNIST images of both digits."
        ),
        tags=("digit", "1", "7", "handwriting", "mnist", "grayscale", "vae", "mixed"),
        small=True,
    ),
    _sample_set(
        "clipart-mammals",
        "openclipart:animals/mammals",
        "Mammals (Open Clip Art)",
        "Colourful clip art of mammals: cats, dogs, horses, cows, elephants and other animals, "
        "cartoon and realistic drawings on white.",
    ),
    _sample_set(
        "clipart-birds",
        "openclipart:animals/birds",
        "Birds (Open Clip Art)",
        "Clip-art drawings of birds: parrots, owls, penguins, ducks and songbirds, perched or "
        "in flight, on a white background.",
        small=True,
    ),
    _sample_set(
        "clipart-fish",
        "openclipart:animals/fish",
        "Fish (Open Clip Art)",
        "Cartoon and naturalistic clip art of fish and other sea creatures, mostly side views "
        "in bright colours on white.",
    ),
    _sample_set(
        "clipart-bugs",
        "openclipart:animals/bugs",
        "Insects and bugs (Open Clip Art)",
        "Clip art of insects and small creatures: butterflies, ladybirds, bees, ants, spiders "
        "and beetles, drawn on white.",
    ),
    _sample_set(
        "clipart-dinosaurs",
        "openclipart:animals/dinosaurs",
        "Dinosaurs (Open Clip Art)",
        "Cartoon drawings of dinosaurs: long-necked sauropods, T. rex and horned dinosaurs "
        "in greens and browns.",
    ),
    _sample_set(
        "clipart-fruit",
        "openclipart:food/fruit",
        "Fruit (Open Clip Art)",
        "Clip art of fresh fruit: apples, bananas, oranges, pears, cherries, grapes and "
        "strawberries, glossy and colourful on white.",
    ),
    _sample_set(
        "clipart-beverages",
        "openclipart:food/beverages",
        "Drinks (Open Clip Art)",
        "Clip art of drinks: bottles, glasses, juice boxes, teapots and mugs, with wine, beer, "
        "juice and tea.",
    ),
    _sample_set(
        "clipart-desserts",
        "openclipart:food/desserts",
        "Desserts (Open Clip Art)",
        "Drawings of sweets and desserts: cakes, cupcakes, pies, ice cream cones, cookies and "
        "candy, in pastel colours.",
    ),
    _sample_set(
        "clipart-vehicles",
        "openclipart:transportation/vehicles",
        "Vehicles (Open Clip Art)",
        "Clip art of road vehicles: cars, trucks, buses, vans and motorbikes, mostly side "
        "views in flat colours.",
    ),
    _sample_set(
        "clipart-boats",
        "openclipart:transportation/boating",
        "Boats (Open Clip Art)",
        "Clip art of boats and ships: sailing boats, rowing boats, ferries and ships at sea, "
        "often with blue water.",
    ),
    _sample_set(
        "clipart-flowers",
        "openclipart:plants/flowers",
        "Flowers (Open Clip Art)",
        "Clip art of flowers: roses, tulips, daisies and sunflowers, single blooms and "
        "bouquets with green leaves.",
    ),
    _sample_set(
        "clipart-trees",
        "openclipart:plants/trees",
        "Trees (Open Clip Art)",
        "Drawings of trees: leafy deciduous trees, pines and palm trees, green crowns on brown "
        "trunks.",
    ),
    _sample_set(
        "clipart-homes",
        "openclipart:buildings/homes",
        "Houses (Open Clip Art)",
        "Clip art of houses and homes: cottages, cabins and houses with pitched roofs, doors "
        "and windows.",
    ),
    _sample_set(
        "clipart-clothing",
        "openclipart:people/clothing",
        "Clothes and accessories (Open Clip Art)",
        "Clip art of clothing and accessories: hats, shirts, boots, jewellery and chains, "
        "drawn in colour on white.",
    ),
    _sample_set(
        "clipart-music",
        "openclipart:recreation/music",
        "Music (Open Clip Art)",
        "Clip art about music: guitars, drums, cellos and other instruments, records, notes "
        "and people singing.",
    ),
    _sample_set(
        "clipart-weather",
        "openclipart:signs_and_symbols/weather",
        "Weather symbols (Open Clip Art)",
        "Weather icons and drawings: clouds, rain drops, lightning bolts, snowflakes, icicles "
        "and suns.",
    ),
    _sample_set(
        "clipart-smilies",
        "openclipart:people/smilies",
        "Smiley faces (Open Clip Art)",
        "Round yellow smiley faces and emoticons with different expressions: happy, sad, "
        "winking, angry.",
    ),
    _sample_set(
        "tuxpaint-mammals",
        "tuxpaint:animals/mammals",
        "Mammals (Tux Paint stamps)",
        "Tux Paint stamps of mammals: photos and drawings of dogs, cats, horses, bears, "
        "rabbits and other animals, cut out on transparent backgrounds.",
    ),
    _sample_set(
        "tuxpaint-birds",
        "tuxpaint:animals/birds",
        "Birds (Tux Paint stamps)",
        "Tux Paint stamps of birds: photos and drawings of ducks, owls, penguins, parrots and "
        "other birds, cut out.",
        small=True,
    ),
    _sample_set(
        "tuxpaint-fruit",
        "tuxpaint:food/fruit",
        "Fruit (Tux Paint stamps)",
        "Tux Paint stamps of fruit: photos of apples, bananas, oranges, lemons, berries and "
        "melons, cut out.",
    ),
    _sample_set(
        "tuxpaint-houses",
        "tuxpaint:town/houses",
        "Houses (Tux Paint stamps)",
        "Tux Paint stamps of houses and buildings to stamp into a town: homes, huts and "
        "cottages, drawn and photographed.",
    ),
    _sample_set(
        "emoji-smileys",
        "emoji:smileys",
        "Smiley emoji (Noto Color Emoji)",
        "Yellow emoji faces from Google's Noto Color Emoji: grinning, laughing, winking, "
        "crying and surprised smileys.",
    ),
    _sample_set(
        "lfw-faces",
        "lfw:faces",
        "Faces in the wild (LFW crops)",
        "Grayscale close-up photos of real people's faces cropped from news photographs "
        "(Labeled Faces in the Wild), frontal, centred on eyes, nose and mouth.",
        small=True,
    ),
    ModelSpec(
        id="clipart-animals-mixed",
        kind="sample_set",
        classes=(
            "openclipart:animals/mammals",
            "openclipart:animals/birds",
            "openclipart:animals/fish",
        ),  # fmt: skip
        name="Animals: mammals, birds and fish (Open Clip Art)",
        description=(
            "A mixed folder of animal clip art: mammals, birds and fish, cartoon and "
            "realistic, in colour on white."
        ),
        tags=("openclipart", "sample-set", "mixed"),
    ),
    ModelSpec(
        id="face-dcgan-64",
        kind="pretrained_gan",
        classes=("face_gan:faces",),
        name="Synthetic faces (DCGAN, 64x64)",
        description=(
            "A DCGAN that generates 64x64 colour portraits of synthetic human faces, trained on "
            "the DigiFace-1M rendered face dataset: head and shoulders, varied skin tones, hair "
            "and glasses, soft backgrounds."
        ),
        tags=("portrait", "person", "gan", "synthetic"),
        small=True,
    ),
)


def labels_of(model: ModelSpec) -> list[str]:
    """A model's labels: those of its classes, in class order, without repeats."""
    return list(dict.fromkeys(CLASS_LABELS[name] for name in model.classes))


def select_models(small: bool) -> tuple[ModelSpec, ...]:
    """The models of the full zoo, or of the small (CI) one."""
    return tuple(model for model in MODELS if model.small or not small)
