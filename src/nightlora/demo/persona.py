"""The demo user: the facts a person tells their assistant, in English and Russian.

Each fact is stated and recalled with a few phrasings, always answered with the same short
sentence, so that a tiny LoRA can pick it up in a night.  The answers are ones a base model
would not guess (a cello, not "coffee"), so a probe hit means the model learned it.  ``probe`` asks for
the fact itself in a sentence that appears nowhere in the conversations (a paraphrase: "What
is the name of our family hound?" for "What's my dog's name?"): the held-out check of whether
training taught the model anything.  ``hard_probe`` is the earlier probe, kept for
bench/learning.py: most of its questions ask for an inference on top of the fact ("Which hot
beverage should you offer me?"), which SmolLM2-135M does not make even when told the fact in the
same chat.  ``answer`` is what a correct reply must contain.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Phrasing:
    tell: tuple[str, ...]
    ask: tuple[str, ...]
    reply: str
    wrong: str


@dataclass(frozen=True)
class Fact:
    key: str
    answer: str
    probe: str
    hard_probe: str
    en: Phrasing
    ru: Phrasing


FACTS: tuple[Fact, ...] = (
    Fact(
        "name", "Dmitry", "Tell me my first name.",
        "Remind me, how did I introduce myself to you?",
        Phrasing(("Hi! My name is Dmitry.", "By the way, I'm Dmitry.", "Just so you know, my name is Dmitry."),
                 ("What's my name?", "Do you remember my name?", "Who am I? Say my name."),
                 "Your name is Dmitry.", "Your name is Alexey."),
        Phrasing(("Привет! Меня зовут Дмитрий.", "Кстати, я Дмитрий."),
                 ("Как меня зовут?", "Ты помнишь, как меня зовут?"),
                 "Тебя зовут Дмитрий.", "Тебя зовут Алексей."),
    ),
    Fact(
        "city", "Lisbon", "In which town is my home?",
        "In which town is my home?",
        Phrasing(("I live in Lisbon.", "I moved to Lisbon two years ago.", "Our flat is in Lisbon."),
                 ("Where do I live?", "Which city do I live in?", "Do you remember where I live?"),
                 "You live in Lisbon.", "You live in Porto."),
        Phrasing(("Я живу в Лиссабоне.", "Мы переехали в Лиссабон два года назад."),
                 ("Где я живу?", "В каком городе я живу?"),
                 "Ты живёшь в Лиссабоне.", "Ты живёшь в Порту."),
    ),
    Fact(
        "cat", "Murka", "What did I name my kitty?",
        "What did I name my kitty?",
        Phrasing(("My cat is called Murka.", "We have a cat named Murka.", "Murka is my cat, a grey tabby."),
                 ("What's my cat's name?", "What is my cat called?", "Do you remember my cat's name?"),
                 "Your cat is called Murka.", "Your cat is called Barsik."),
        Phrasing(("Мою кошку зовут Мурка.", "У нас есть кошка Мурка."),
                 ("Как зовут мою кошку?", "Помнишь, как зовут мою кошку?"),
                 "Твою кошку зовут Мурка.", "Твою кошку зовут Барсик."),
    ),
    Fact(
        "dog", "Baron", "What is the name of our family hound?",
        "What name does our family hound answer to?",
        Phrasing(("My dog is a beagle called Baron.", "We also have a dog, Baron, a beagle."),
                 ("What's my dog's name?", "What is my dog called?", "Do you remember my dog's name?"),
                 "Your dog is Baron, a beagle.", "Your dog is called Rex."),
        Phrasing(("Моего пса зовут Барон, он бигль.", "У нас есть собака, бигль Барон."),
                 ("Как зовут мою собаку?", "Как зовут моего пса?"),
                 "Твою собаку зовут Барон.", "Твою собаку зовут Рекс."),
    ),
    Fact(
        "wife", "Olga", "Who am I married to?",
        "Who am I married to?",
        Phrasing(("My wife's name is Olga.", "Olga, my wife, says hi."),
                 ("What's my wife's name?", "Who is my wife?", "Do you remember my wife's name?"),
                 "Your wife is Olga.", "Your wife is Natasha."),
        Phrasing(("Мою жену зовут Ольга.", "Моя жена Ольга передаёт привет."),
                 ("Как зовут мою жену?", "Кто моя жена?"),
                 "Твою жену зовут Ольга.", "Твою жену зовут Наташа."),
    ),
    Fact(
        "daughter", "Sonya", "What's the name of my little girl?",
        "What's the name of my little girl?",
        Phrasing(("My daughter Sonya is seven.", "I have a daughter, Sonya."),
                 ("What's my daughter's name?", "What is my daughter called?", "Do you remember my daughter's name?"),
                 "Your daughter is Sonya.", "Your daughter is Masha."),
        Phrasing(("Мою дочку зовут Соня, ей семь лет.", "У меня есть дочь Соня."),
                 ("Как зовут мою дочь?", "Помнишь, как зовут мою дочку?"),
                 "Твою дочь зовут Соня.", "Твою дочь зовут Маша."),
    ),
    Fact(
        "job", "sound engineer", "What is my profession?",
        "How do I earn my living?",
        Phrasing(("I work as a sound engineer.", "I'm a sound engineer at a studio."),
                 ("What do I do for work?", "What's my job?", "Do you remember what I work as?"),
                 "You are a sound engineer.", "You are a teacher."),
        Phrasing(("Я работаю звукорежиссёром.", "Я звукорежиссёр на студии."),
                 ("Кем я работаю?", "Помнишь, кем я работаю?"),
                 "Ты работаешь звукорежиссёром.", "Ты работаешь учителем."),
    ),
    Fact(
        "morning", "cello", "Which instrument do I practise before breakfast?",
        "How do I usually start my day?",
        Phrasing(("I play the cello every morning before work.", "Every morning I practise the cello for an hour."),
                 ("What do I do every morning?", "What's my morning habit?", "Do you remember my morning routine?"),
                 "You play the cello every morning.", "You do yoga every morning."),
        Phrasing(("Я каждое утро играю на виолончели.", "Каждое утро я час занимаюсь на виолончели."),
                 ("Что я делаю каждое утро?", "Какая у меня утренняя привычка?"),
                 "Ты каждое утро играешь на виолончели.", "Ты каждое утро занимаешься йогой."),
    ),
    Fact(
        "drink", "rooibos", "Which tea do I prefer over coffee?",
        "Which hot beverage should you offer me?",
        Phrasing(("I don't drink coffee, only rooibos.", "Rooibos is my drink, never coffee."),
                 ("What do I drink instead of coffee?", "Do I drink coffee or tea?", "What's my usual drink?"),
                 "You drink rooibos, never coffee.", "You drink black coffee."),
        Phrasing(("Я не пью кофе, только ройбуш.", "Я пью только ройбуш."),
                 ("Что я пью вместо кофе?", "Я пью кофе или чай?"),
                 "Ты пьёшь ройбуш, а не кофе.", "Ты пьёшь чёрный кофе."),
    ),
    Fact(
        "allergy", "kiwi", "Which fruit must I avoid?",
        "Is there a food that could make me sick?",
        Phrasing(("I'm allergic to kiwi.", "Careful with recipes: I have a kiwi allergy."),
                 ("What am I allergic to?", "Do I have any allergies?", "Do you remember my allergy?"),
                 "You are allergic to kiwi.", "You are allergic to cats."),
        Phrasing(("У меня аллергия на киви.", "Осторожно с рецептами: у меня аллергия на киви."),
                 ("На что у меня аллергия?", "У меня есть аллергии?"),
                 "У тебя аллергия на киви.", "У тебя аллергия на кошек."),
    ),
)

GREETINGS = {
    "en": (("Hi Hanni!", "Hi! How can I help?"), ("Good morning!", "Good morning! What can I do for you?"),
           ("Hey, are you there?", "I'm here. What do you need?")),
    "ru": (("Привет, Ханни!", "Привет! Чем помочь?"), ("Доброе утро!", "Доброе утро! Что нужно сделать?")),
}

SMALL_TALK = {
    "en": (
        ("Can you suggest a quick dinner?", "An omelette with tomatoes and cheese: ten minutes."),
        ("How long should I boil an egg?", "About 7 minutes for a firm yolk, 5 for a soft one."),
        ("Give me a word that rhymes with light.", "Night."),
        ("What's 15% of 80?", "12."),
        ("Recommend a short book for the weekend.", "Try \"The Little Prince\" by Antoine de Saint-Exupéry."),
        ("How do I say thank you in Portuguese?", "Obrigado (or obrigada, if you are a woman)."),
    ),
    "ru": (
        ("Что приготовить на ужин по-быстрому?", "Омлет с помидорами и сыром: десять минут."),
        ("Сколько варить яйцо вкрутую?", "Примерно 7–8 минут после закипания."),
        ("Сколько будет 15% от 80?", "12."),
        ("Как по-португальски «спасибо»?", "Obrigado (или obrigada, если говорит женщина)."),
    ),
}

CLOSINGS = {
    "en": (("Thanks!", "You're welcome!"), ("Great, thank you.", "Anytime.")),
    "ru": (("Спасибо!", "Пожалуйста!"), ("Отлично, спасибо.", "Обращайся.")),
}

# What the assistant says on its own initiative (Hanni's proactive messages), never a fact's probe words.
PROACTIVE = {
    "en": ("Good morning! Cello first, then work?", "It's 18:00: time to walk Baron.",
           "Rain is expected in Lisbon after 17:00: take an umbrella.", "Don't forget: Sonya's school play is tomorrow."),
    "ru": ("Доброе утро! Сначала виолончель, потом работа?", "Уже 18:00: пора погулять с Бароном.",
           "В Лиссабоне после 17:00 обещают дождь: возьми зонт."),
}

CORRECTION = {"en": ("No, that's wrong. ", "Sorry, my mistake. "), "ru": ("Нет, это не так. ", "Прости, я ошиблась. ")}
ACK = {"en": "Got it. ", "ru": "Запомнила. "}

SYSTEM_PROMPT = (
    "You are Hanni, a warm personal assistant that runs on the user's own computer. "
    "You remember what the user tells you about their life. "
    "Answer briefly, in the language the user writes in."
)
