"""Korean topic renderers for the synthetic DialogSum-style corpus (driven by ``synthetic.py``).

Same contract as ``synthetic_en.py``: core turns (even positions ``#Person1#``) and a one-sentence
summary carrying the decision. Particles (은/는, 이/가, 을/를, 으로/로) follow the last syllable of
the word they attach to, so names and entities read naturally; ``#Person1#``/``#Person2#`` are read
as 퍼슨원/퍼슨투, hence ``#Person1#은`` and ``#Person2#는``.
"""

from __future__ import annotations

import random

from lit_qsum.data.synthetic_en import Render

NAMES = ["민수", "지은", "서연", "현우", "지훈", "수빈", "예린", "도윤", "하준", "유진", "김 과장님", "박 대리님",
         "이 선생님", "최 부장님"]
DAYS = ["월요일", "화요일", "수요일", "목요일", "금요일", "토요일", "일요일"]
# Final-consonant status of the Korean reading of each digit (일, 이, 삼, 사, 오, 육, 칠, 팔, 구, 영).
_DIGIT_HAS_FINAL = {"0": True, "1": True, "2": False, "3": True, "4": False, "5": False, "6": True,
                    "7": True, "8": True, "9": False}


def _final(word: str) -> int | None:
    """Index of the final consonant of ``word``'s last syllable (0 = none), or None if unknown."""
    last = word.rstrip()[-1]
    if "가" <= last <= "힣":
        return (ord(last) - ord("가")) % 28
    if last in _DIGIT_HAS_FINAL:
        # 1, 7, 8 end in ㄹ (일, 칠, 팔), which matters for 으로/로.
        return 8 if last in "178" else (1 if _DIGIT_HAS_FINAL[last] else 0)
    return 0


def josa(word: str, with_final: str, without_final: str) -> str:
    """Attaches the particle form that fits ``word``: ``josa("민수", "은", "는") == "민수는"``."""
    final = _final(word)
    if with_final == "으로":
        # ㄹ-final words take 로 (서울로), like vowel-final ones.
        return word + ("으로" if final not in (0, 8) else "로")
    return word + (with_final if final else without_final)


def clock(hour: int, minute: int) -> str:
    """Formats a 24-hour time as ``오후 7시`` or ``오전 10시 30분``."""
    half = "오전" if hour < 12 else "오후"
    h12 = hour % 12 or 12
    return f"{half} {h12}시" if minute == 0 else f"{half} {h12}시 {minute}분"


def won(amount: int) -> str:
    """Formats a price as ``35,000원``."""
    return f"{amount:,}원"


def appointment(rng: random.Random) -> tuple[list[str], str]:
    provider = rng.choice(["김 원장님", "박 선생님", "치과 선생님", "안과 선생님", "정 원장님"])
    reason = rng.choice(["정기 검진", "치통", "목감기", "허리 통증", "피부 발진"])
    name = rng.choice(NAMES[:10])
    asked, day = rng.sample(DAYS, 2)
    time = clock(rng.choice([9, 10, 11, 14, 15, 16]), rng.choice([0, 30]))
    turns = [f"안녕하세요. {josa(reason, '으로', '로')} {provider}께 진료를 받고 싶어서 전화드렸어요."]
    if rng.random() < 0.5:
        turns += [f"죄송하지만 {josa(asked, '은', '는')} 예약이 다 찼어요. {day} {josa(time, '은', '는')} 어떠세요?",
                  f"네, {day} {josa(time, '이', '가')} 좋아요."]
    else:
        turns += ["네, 언제 오시겠어요?", f"가능하면 {day} {josa(time, '으로', '로')} 해 주세요."]
    turns += ["알겠습니다. 성함이 어떻게 되세요?", f"{name}입니다.",
              f"감사합니다, {name} 님. {day} {time}에 뵙겠습니다."]
    summary = rng.choice([
        f"#Person1#은 {day} {time}에 {provider}께 진료 예약을 한다.",
        f"{josa(name, '은', '는')} {josa(reason, '으로', '로')} {day} {time}에 {provider}께 진료를 받기로 한다.",
        f"#Person2#는 #Person1#의 {provider} 진료를 {day} {josa(time, '으로', '로')} 잡아 준다.",
    ])
    return turns, summary


def restaurant(rng: random.Random) -> tuple[list[str], str]:
    place = rng.choice(["루이지 식당", "황금용 중식당", "바다 횟집", "로사 카페", "서울 정원", "초록 식탁", "한강 갈비"])
    name = rng.choice(NAMES[:10])
    party = rng.randint(2, 8)
    day = rng.choice(DAYS)
    asked, time = rng.sample([clock(h, m) for h in (18, 19, 20) for m in (0, 30)], 2)
    turns = [f"네, {place}입니다. 무엇을 도와드릴까요?", f"{day} 저녁에 {party}명 자리를 예약하고 싶은데 가능할까요?"]
    if rng.random() < 0.5:
        turns += [f"{josa(asked, '은', '는')} 자리가 없는데, {josa(time, '은', '는')} 괜찮으세요?",
                  f"네, {josa(time, '으로', '로')} 할게요."]
    else:
        turns += ["몇 시로 해 드릴까요?", f"{josa(time, '으로', '로')} 부탁드려요."]
    turns += ["예약자 성함을 알려 주시겠어요?", f"{name}입니다.", f"{day} {time}, {party}명으로 예약되었습니다."]
    summary = rng.choice([
        f"#Person2#는 {day} {time}에 {place}에 {party}명 자리를 예약한다.",
        f"{josa(name, '은', '는')} {day} {time}에 {place}에 {party}명 자리를 예약한다.",
        f"#Person1#은 #Person2#의 {day} {time} {party}명 예약을 받는다.",
    ])
    return turns, summary


def food_order(rng: random.Random) -> tuple[list[str], str]:
    shop = rng.choice(["피자 마을", "국수 집", "버거 하우스", "김밥 천국", "치킨 나라"])
    food, counter = rng.choice([("피자", "판"), ("짜장면", "그릇"), ("치킨", "마리"), ("김밥", "줄"), ("떡볶이", "인분")])
    drink = rng.choice(["콜라", "사이다", "오렌지 주스", "아이스티"])
    qty = rng.randint(1, 5)
    price = rng.randint(8, 60) * 1000
    minutes = rng.choice([20, 25, 30, 40, 45])
    address = f"{rng.choice(['행복', '푸른', '중앙', '한빛', '새솔'])}아파트 {rng.randint(101, 112)}동"
    turns = [f"여보세요, {shop}죠? 배달 주문하려고 하는데요. {food} {qty}{counter}하고 {drink} 하나 주세요.",
             "네, 더 필요하신 건 없으세요?", "그거면 돼요. 배달되나요?", "네, 주소가 어떻게 되세요?",
             f"{address}이에요.", f"총 {won(price)}입니다. {minutes}분 정도 걸려요."]
    portion = f"{qty}{counter}"
    summary = rng.choice([
        f"#Person1#은 {shop}에서 {food} {josa(portion, '과', '와')} {josa(drink, '을', '를')} {won(price)}에 주문한다.",
        f"#Person1#은 {food} {josa(portion, '을', '를')} {josa(address, '으로', '로')} 배달 주문하고, "
        f"음식은 {minutes}분 뒤에 도착한다.",
    ])
    return turns, summary


def travel(rng: random.Random) -> tuple[list[str], str]:
    city = rng.choice(["부산", "도쿄", "파리", "런던", "제주", "로마", "방콕", "강릉"])
    mode = rng.choice(["기차", "버스", "비행기"])
    tickets = rng.randint(1, 4)
    day = rng.choice(DAYS)
    asked, time = rng.sample([clock(h, m) for h in (7, 8, 9, 13, 15, 17) for m in (0, 30)], 2)
    price = rng.randint(2, 40) * 10000
    turns = [f"안녕하세요, {day}에 {city} 가는 {mode}표 {tickets}장 사려고 하는데요."]
    if rng.random() < 0.5:
        turns += [f"{asked} {josa(mode, '은', '는')} 매진이에요. {time} {josa(mode, '은', '는')} 자리가 있어요.",
                  "그걸로 할게요."]
    else:
        turns += ["몇 시 출발로 드릴까요?", f"{josa(time, '으로', '로')} 주세요."]
    turns += [f"모두 {won(price)}입니다.", "카드로 계산할게요."]
    summary = rng.choice([
        f"#Person1#은 {day} {time}에 출발하는 {city}행 {mode}표 {tickets}장을 산다.",
        f"#Person1#은 {won(price)}을 내고 {day} {time} {city}행 {josa(mode, '을', '를')} 예매한다.",
    ])
    return turns, summary


def hotel(rng: random.Random) -> tuple[list[str], str]:
    hotel_name = rng.choice(["그랜드 호텔", "바다 전망 여관", "플라자 호텔", "산장 호텔", "시티 스테이"])
    room = rng.choice(["싱글룸", "더블룸", "트윈룸", "패밀리룸"])
    nights = rng.randint(1, 6)
    day = rng.choice(DAYS)
    rate = rng.randint(6, 30) * 10000
    turns = [f"{hotel_name}에 오신 걸 환영합니다. 예약하셨나요?",
             f"아니요, {day}부터 {nights}박 묵을 {josa(room, '이', '가')} 있을까요?",
             f"네, 있습니다. 1박에 {won(rate)}이고 조식이 포함돼요.", "좋아요, 그걸로 할게요.",
             "신분증 좀 보여 주시겠어요?", "여기 있어요.",
             f"감사합니다. 체크아웃은 {clock(rng.choice([10, 11, 12]), 0)}입니다. 편히 쉬세요."]
    summary = rng.choice([
        f"#Person2#는 {day}부터 {nights}박 동안 {hotel_name} {josa(room, '을', '를')} 예약한다.",
        f"#Person2#는 1박에 {won(rate)}인 {josa(room, '을', '를')} {day}부터 잡는다.",
    ])
    return turns, summary


def complaint(rng: random.Random) -> tuple[list[str], str]:
    item = rng.choice(["커피 메이커", "재킷", "휴대폰 충전기", "책상 스탠드", "배낭", "전기 주전자"])
    problem = rng.choice(["고장 나 있어요", "사이즈가 안 맞아요", "부품이 빠져 있어요", "흠집이 나 있어요"])
    day = rng.choice(DAYS)
    offered, remedy = rng.sample(["전액 환불", "교환", "무료 수리", "적립금"], 2)
    turns = [f"저기요, {day}에 여기서 {josa(item, '을', '를')} 샀는데 {problem}.",
             "불편을 드려 죄송합니다. 영수증 있으세요?", "네, 여기 있어요."]
    if rng.random() < 0.5:
        turns += [f"{josa(offered, '은', '는')} 가능합니다.", f"저는 {josa(remedy, '을', '를')} 원해요.",
                  f"알겠습니다. {josa(remedy, '으로', '로')} 해 드릴게요."]
    else:
        turns += [f"그럼 {josa(remedy, '으로', '로')} 처리해 드릴게요.", "감사합니다."]
    summary = rng.choice([
        f"#Person1#은 {day}에 산 {item}에 문제가 있다고 항의하고 {josa(remedy, '을', '를')} 받기로 한다.",
        f"#Person2#는 #Person1#이 {day}에 산 {item}에 대해 {josa(remedy, '을', '를')} 해 주기로 한다.",
    ])
    return turns, summary


def shopping(rng: random.Random) -> tuple[list[str], str]:
    item = rng.choice(["셔츠", "머그컵", "공책", "목도리", "우산", "양초"])
    other, color = rng.sample(["파란색", "빨간색", "검은색", "흰색", "초록색"], 2)
    qty = rng.randint(2, 6)
    unit = rng.randint(3, 40) * 1000
    discount = rng.choice([10, 15, 20, 25])
    total = qty * unit * (100 - discount) // 100
    turns = [f"이 {item} {other}도 있어요?", f"죄송하지만 지금은 {color}만 남았어요.",
             f"그럼 {color} {item} 얼마예요?", f"하나에 {won(unit)}이에요.", f"{qty}개 사면 깎아 주실 수 있어요?",
             f"네, {discount}% 할인해서 {won(total)}에 드릴게요.", "좋아요, 그렇게 살게요."]
    summary = rng.choice([
        f"#Person1#은 {color} {item} {qty}개를 {discount}% 할인받아 {won(total)}에 산다.",
        f"#Person2#는 #Person1#에게 {item} {qty}개를 {won(total)}에 판다.",
    ])
    return turns, summary


def meeting(rng: random.Random) -> tuple[list[str], str]:
    event = rng.choice(["팀 회의", "프로젝트 점검", "예산 회의", "고객 통화", "교육 세션"])
    boss = rng.choice(NAMES[10:])
    old, new = rng.sample(DAYS, 2)
    time = clock(rng.choice([9, 10, 11, 13, 14, 15, 16]), rng.choice([0, 30]))
    room = rng.choice(["3번 회의실", "5번 회의실", "7번 회의실", "작은 회의실", "로비 카페"])
    turns = [f"{boss}께서 갑자기 일이 생겨서 {old} {event}에 못 오신대요. 다른 날로 옮길 수 있을까요?",
             f"{new} {time} 어때요?", "저는 좋아요. 어디서 할까요?",
             f"{room}에서 해요.", f"네, {boss}께 {new} {time}, {josa(room, '이라고', '라고')} 전할게요."]
    summary = rng.choice([
        f"#Person1#과 #Person2#는 {josa(event, '을', '를')} {old}에서 {new} {josa(time, '으로', '로')} 옮긴다.",
        f"{boss}의 사정으로 {josa(event, '이', '가')} {new} {time} {room}에서 열리게 된다.",
    ])
    return turns, summary


TOPICS: dict[str, Render] = {
    "appointment": appointment, "restaurant": restaurant, "food_order": food_order, "travel": travel,
    "hotel": hotel, "complaint": complaint, "shopping": shopping, "meeting": meeting,
}
OPENER_TOPICS = {"appointment", "travel", "shopping", "meeting"}
OPENERS = [("안녕하세요.", "안녕하세요. 무엇을 도와드릴까요?"), ("저기요, 잠깐 시간 괜찮으세요?", "네, 말씀하세요.")]
CLOSERS = ["감사합니다.", "네, 고맙습니다.", "좋아요, 그때 봬요.", "알겠어요. 수고하세요."]
